package dataplane

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
)

// outsideService listens on TCP addr:port in namespace ns (an address
// that is not a server's: the lab's outside service), echoes, and records
// the source address of each connection.
type outsideService struct {
	mu      sync.Mutex
	sources []netip.Addr
}

func (o *outsideService) listen(t *testing.T, ns string, addr netip.AddrPort) {
	t.Helper()
	err := listenTCP(t, ns, addr, func(c net.Conn) {
		ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		o.mu.Lock()
		o.sources = append(o.sources, ap.Addr())
		o.mu.Unlock()
		go func() {
			defer c.Close()
			buf := make([]byte, 256)
			n, _ := c.Read(buf)
			c.Write(buf[:n])
		}()
	})
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
}

func (o *outsideService) last() netip.Addr {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.sources) == 0 {
		return netip.Addr{}
	}
	return o.sources[len(o.sources)-1]
}

// dialOutside connects from guest g to dst and exchanges a marker.
func dialOutside(t *testing.T, g *guest, dst netip.AddrPort, timeout time.Duration) error {
	t.Helper()
	var c net.Conn
	err := inNS(t, g.ns, func() error {
		d := net.Dialer{Timeout: timeout}
		var err error
		c, err = d.Dial("tcp4", dst.String())
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	return exchange(c, fmt.Sprintf("corridor-egress %s->%s", g.addr, dst))
}

// testEgress: a guest reaches the outside destination its state names,
// on the named port only, with the host's underlay address as source
// (SNAT); other outside addresses, other ports and the other host's own
// underlay address stay denied; with the ruleset flushed nothing leaves
// (the guest-routes guard holds for egress too), and a new Apply repairs.
// The hosts keep strict reverse-path filtering (newEnv): the allowed
// connection's replies pass it (see egressMarks).
func testEgress(t *testing.T) {
	e := newEnv(t)
	g := e.addGuest(e.a, "e1", "shop", "web", "100.64.0.1")
	e.a.open(t)
	e.b.open(t)
	n := e.a.underlay.As4()[2]
	svc := netip.AddrFrom4([4]byte{198, 18, n, 100})   // allowed
	other := netip.AddrFrom4([4]byte{198, 18, n, 101}) // not named
	for _, a := range []netip.Addr{svc, other} {
		run(t, "ip", "-n", e.b.name, "addr", "add", a.String()+"/32", "dev", "coru0")
	}
	var out outsideService
	for _, ap := range []netip.AddrPort{
		netip.AddrPortFrom(svc, 8080), netip.AddrPortFrom(svc, 8081),
		netip.AddrPortFrom(other, 8080), netip.AddrPortFrom(e.b.underlay, 8080),
	} {
		out.listen(t, e.b.name, ap)
	}
	st := compile.HostState{
		Host: "a", Address: e.a.underlay, VTEPMAC: e.a.vtepMAC, WireGuardPort: 51820,
		Guests: hostGuests(e.a),
		Outbound: []compile.Outbound{{App: "shop", Class: "web", Sources: []netip.Addr{g.addr},
			Dests: []netip.Prefix{netip.PrefixFrom(svc, 32)}, Protocol: "tcp", Ports: []int{8080}}},
	}
	stB := compile.HostState{Host: "b", Address: e.b.underlay, VTEPMAC: e.b.vtepMAC, WireGuardPort: 51820}
	ctx := context.Background()
	if err := e.a.dp.Apply(ctx, st); err != nil {
		t.Fatalf("Apply on A: %v", err)
	}
	if err := e.b.dp.Apply(ctx, stB); err != nil {
		t.Fatalf("Apply on B: %v", err)
	}

	t.Run("snat", func(t *testing.T) {
		if err := dialOutside(t, g, netip.AddrPortFrom(svc, 8080), 2*time.Second); err != nil {
			t.Fatalf("guest -> outside %s:8080 (allowed): %v", svc, err)
		}
		if rp := strings.TrimSpace(run(t, "ip", "netns", "exec", e.a.name, "sysctl", "-n", "net.ipv4.conf.all.rp_filter")); rp != "1" {
			t.Errorf("host A's net.ipv4.conf.all.rp_filter = %s, want 1 (strict, kept)", rp)
		}
		if src := out.last(); src != e.a.underlay {
			t.Fatalf("the outside service saw source %s, want the host's underlay address %s", src, e.a.underlay)
		}
	})
	t.Run("denied", func(t *testing.T) {
		for _, dst := range []netip.AddrPort{
			netip.AddrPortFrom(svc, 8081), netip.AddrPortFrom(other, 8080), netip.AddrPortFrom(e.b.underlay, 8080),
		} {
			if err := dialOutside(t, g, dst, 700*time.Millisecond); err == nil {
				t.Errorf("guest -> %s connected; no outbound entry names it", dst)
			}
		}
		// No counter: an unmarked packet from a guest dies in routing
		// (rule RulePrioGuest, table TableGuest unreachable) before the
		// forward chain, like one to a remote guest without a rule. The
		// listeners above exist, so a failed dial is a refusal.
	})
	t.Run("flushed", func(t *testing.T) {
		// Positive control first: the allowed destination answers.
		if err := dialOutside(t, g, netip.AddrPortFrom(svc, 8080), 2*time.Second); err != nil {
			t.Fatalf("control: %v", err)
		}
		if b, err := exec.Command("ip", "netns", "exec", e.a.name, "nft", "flush", "ruleset").CombinedOutput(); err != nil {
			t.Skipf("nft flush ruleset: %v %s", err, b)
		}
		if err := dialOutside(t, g, netip.AddrPortFrom(svc, 8080), 700*time.Millisecond); err == nil {
			t.Fatal("with the ruleset flushed the guest still reached the outside: unmarked egress must be unreachable")
		}
		if err := e.a.dp.Apply(ctx, st); err != nil {
			t.Fatalf("Apply after the flush: %v", err)
		}
		if err := dialOutside(t, g, netip.AddrPortFrom(svc, 8080), 2*time.Second); err != nil {
			t.Fatalf("after repair: %v", err)
		}
	})
}
