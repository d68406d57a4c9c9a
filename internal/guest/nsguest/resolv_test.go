package nsguest

import (
	"bytes"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/spec"
)

func TestResolvConfText(t *testing.T) {
	got := resolvConf([]string{"198.18.0.253", "203.0.113.53"})
	want := "# written by corridor: the app's resolvers\nnameserver 198.18.0.253\nnameserver 203.0.113.53\n"
	if got != want {
		t.Errorf("resolvConf = %q, want %q", got, want)
	}
}

// TestResolversInHash: resolvers are written when the guest starts, so
// a change of resolvers must restart the program; a guest without
// resolvers keeps the hash it had before resolvers existed.
func TestResolversInHash(t *testing.T) {
	r := &Runtime{cfg: Config{Binary: "/opt/corridor/bin/corridor"}}
	g := compile.Guest{Task: "shop/web/0", Spec: spec.Guest{Command: []string{"sleep", "1"}}}
	h0 := r.programHash(g)
	g1 := g
	g1.Resolvers = []netip.Addr{netip.MustParseAddr("198.18.0.253")}
	h1 := r.programHash(g1)
	if h0 == h1 {
		t.Error("hash ignores the resolvers")
	}
	g2 := g
	g2.Resolvers = []netip.Addr{netip.MustParseAddr("198.18.0.254")}
	if h1 == r.programHash(g2) {
		t.Error("hash ignores a change of resolvers")
	}
	if resolverList(g) != nil {
		t.Errorf("resolverList of a guest without resolvers = %v, want nil", resolverList(g))
	}
}

// TestResolvConfInGuest: a sealed guest with resolvers sees exactly them
// in its /etc/resolv.conf (not the host's), and cannot change it.
func TestResolvConfInGuest(t *testing.T) {
	e := newEnv(t, nil)
	g := e.guest("dns", "sh", "-c", `cat /etc/resolv.conf; echo x >>/etc/resolv.conf && echo WRITABLE; echo END; exec sleep 1000`)
	g.Resolvers = []netip.Addr{netip.MustParseAddr("198.18.0.253"), netip.MustParseAddr("203.0.113.53")}
	e.ensure(g)
	log := guest.LogPath(e.cfg.StateDir, g.Task)
	waitFor(t, "the guest's resolv.conf in its log", 10*time.Second, func() bool {
		b, _ := os.ReadFile(log)
		return bytes.Contains(b, []byte("END\n"))
	})
	b := mustRead(t, log)
	if !bytes.Contains(b, []byte("\n"+resolvConf([]string{"198.18.0.253", "203.0.113.53"}))) {
		t.Fatalf("the guest's /etc/resolv.conf is not the resolvers':\n%s", b)
	}
	if bytes.Contains(b, []byte("\nWRITABLE\n")) {
		t.Errorf("the guest could write its /etc/resolv.conf:\n%s", b)
	}
	if host, err := os.ReadFile("/etc/resolv.conf"); err == nil && len(bytes.TrimSpace(host)) > 0 && bytes.Contains(b, bytes.TrimSpace(host)) {
		t.Errorf("the guest's /etc/resolv.conf holds the host's:\n%s", b)
	}
}
