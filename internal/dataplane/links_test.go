package dataplane

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// compileCase compiles the compiler's golden case name (its apps.yaml
// and servers.yaml under internal/compile/testdata).
func compileCase(t *testing.T, name string) *compile.Plan {
	t.Helper()
	dir := filepath.Join("..", "compile", "testdata", name)
	read := func(n string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	apps, err := spec.DecodeApps("apps.yaml", read("apps.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	servers, err := spec.DecodeServers("servers.yaml", read("servers.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := compile.Compile(compile.Input{Apps: apps, Servers: servers})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// linkedHost compiles the compiler's app-to-app case and returns host's
// ruleset text.
func linkedHost(t *testing.T, host string) string {
	t.Helper()
	p := compileCase(t, "app-to-app")
	for _, h := range p.Hosts {
		if h.Host == host {
			d, err := buildDesired(h)
			if err != nil {
				t.Fatal(err)
			}
			return buildRuleset(d, "corw0").text()
		}
	}
	t.Fatalf("no host %s", host)
	return ""
}

// A link between two apps' classes is enforced on a host like a pair
// inside one app, and admits exactly its pairs: on s1 (ledger's api/0 at
// 100.64.0.1, shop's web/0 and app/1), api/0 takes 7000 from shop's app
// tasks only through WireGuard or their own guest interface, and from
// shop's web tasks only through VXLAN or their own guest interface;
// shop's db (100.64.1.5) is admitted nowhere; the mark map sends each
// local pair to api/1 by its own tunnel; the VTEP check admits ledger's
// api/1 behind s2 (reached in plain from web/0) and no other ledger task.
func TestRulesetAcrossApps(t *testing.T) {
	text := linkedHost(t, "s1")
	var admits []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "guest_in: ") && strings.Contains(l, "ip daddr {100.64.0.1}") && strings.HasSuffix(l, "accept") {
			admits = append(admits, l)
		}
	}
	want := []string{
		// ledger's own rule: admin (s3) to api on 7001, encrypted.
		`guest_in: meta nfproto ipv4 iifname "corw0" ip saddr {100.64.0.3} ip daddr {100.64.0.1} meta l4proto tcp th dport {7001} accept`,
		`guest_in: meta nfproto ipv4 iifname "corw0+" ip saddr {100.64.0.3} ip daddr {100.64.0.1} meta l4proto tcp th dport {7001} accept`,
		// the link: shop's app/1 (local) and app/0 (s3) encrypted, web/0
		// (local) and web/1 (s2) plain, on 7000 only.
		`guest_in: meta nfproto ipv4 iifname "corg*" ip saddr {100.64.1.4} ip daddr {100.64.0.1} meta l4proto tcp th dport {7000} accept`,
		`guest_in: meta nfproto ipv4 iifname "corw0" ip saddr {100.64.1.3} ip daddr {100.64.0.1} meta l4proto tcp th dport {7000} accept`,
		`guest_in: meta nfproto ipv4 iifname "corw0+" ip saddr {100.64.1.3} ip daddr {100.64.0.1} meta l4proto tcp th dport {7000} accept`,
		`guest_in: meta nfproto ipv4 iifname "corg*" ip saddr {100.64.1.1} ip daddr {100.64.0.1} meta l4proto tcp th dport {7000} accept`,
		`guest_in: meta nfproto ipv4 iifname "corv0" ip saddr {100.64.1.2} ip daddr {100.64.0.1} meta l4proto tcp th dport {7000} accept`,
	}
	if strings.Join(admits, "\n") != strings.Join(want, "\n") {
		t.Errorf("what ledger/api/0 admits:\n%s\nwant:\n%s", strings.Join(admits, "\n"), strings.Join(want, "\n"))
	}
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, "100.64.1.5} ip daddr {100.64.0") {
			t.Errorf("shop's db reaches ledger: %s", l)
		}
	}
	for _, m := range []struct {
		src, dst string
		mark     uint32
	}{
		{"100.64.1.4", "100.64.0.2", MarkEncrypt}, // app/1 -> api/1: encrypted
		{"100.64.1.1", "100.64.0.2", MarkPlain},   // web/0 -> api/1: plain
		{"100.64.0.1", "100.64.1.3", MarkEncrypt}, // api/0's replies to app/0
		{"100.64.0.1", "100.64.1.2", MarkPlain},   // api/0's replies to web/1
	} {
		if got := pairMark(text, m.src, m.dst); got != markHex(m.mark) {
			t.Errorf("mark of %s -> %s: %q, want %s", m.src, m.dst, got, markHex(m.mark))
		}
	}
	if !strings.Contains(text, "!= {198.18.0.12 . 100.64.0.2, 198.18.0.12 . 100.64.1.2, 198.18.0.13 . 100.64.1.3} counter name \"vtep\" drop") {
		t.Errorf("VTEP check does not admit exactly the plain remote guests:\n%s", text)
	}
	if !strings.Contains(text, `counter name "pair:shop:app:ledger/api" drop`) {
		t.Errorf("no pair counter for the link")
	}
	if !strings.Contains(text, `counter name "allow:shop:app:ledger/api" return`) {
		t.Errorf("no allow counter for the link")
	}
}

func markHex(m uint32) string { return fmt.Sprintf("%#x", m) }
