package dataplane

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// backendServer listens on g's address:port and answers each connection
// with "<its address> <the client address it sees>".
func backendServer(t *testing.T, g *guest, port int) {
	t.Helper()
	err := listenTCP(t, g.ns, netip.AddrPortFrom(g.addr, uint16(port)), func(c net.Conn) {
		go func() {
			defer c.Close()
			ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "%s %s\n", g.addr, ap.Addr())
		}()
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", g.ns, err)
	}
}

// ask connects from src in namespace ns to dst and reads the answer.
func ask(t *testing.T, ns string, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (backend, seen netip.Addr, err error) {
	t.Helper()
	var c net.Conn
	err = inNS(t, ns, func() error {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		var err error
		c, err = d.Dial("tcp4", dst.String())
		return err
	})
	if err != nil {
		return backend, seen, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return backend, seen, fmt.Errorf("read: %w", err)
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return backend, seen, fmt.Errorf("answer %q", line)
	}
	backend, _ = netip.ParseAddr(f[0])
	seen, _ = netip.ParseAddr(f[1])
	return backend, seen, nil
}

// ingressEnv is two hosts (newEnv), web guests a1 on A and b1 on B, and
// an outside client behind B, routed to A by the underlay: A is the entry
// host of port 80, published to the class port 8080.
type ingressEnv struct {
	t                       testing.TB
	e                       *env
	a1, b1                  *guest
	cli                     string
	allowed, denied, source netip.Addr
	published               netip.AddrPort
}

func newIngressEnv(t testing.TB) *ingressEnv {
	e := newEnv(t)
	ie := &ingressEnv{t: t, e: e}
	ie.a1 = e.addGuest(e.a, "i1", "shop", "web", "100.64.0.1")
	ie.b1 = e.addGuest(e.b, "i2", "shop", "web", "100.64.0.2")
	e.a.open(t)
	e.b.open(t)
	// The client, behind B on a link of its own: B routes it to A, where
	// it arrives by the underlay device, as a client does.
	cli := e.id + "cli"
	ie.cli = cli
	run(t, "ip", "netns", "add", cli)
	t.Cleanup(func() { run(t, "ip", "netns", "del", cli) })
	run(t, "ip", "-n", e.b.name, "link", "add", "coruc", "type", "veth", "peer", "name", "eth0", "netns", cli)
	run(t, "ip", "-n", e.b.name, "addr", "add", "203.0.113.1/24", "dev", "coruc")
	run(t, "ip", "-n", e.b.name, "link", "set", "coruc", "up")
	run(t, "ip", "-n", e.b.name, "route", "add", "192.0.2.0/24", "via", "203.0.113.10", "dev", "coruc")
	run(t, "ip", "netns", "exec", e.b.name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for _, n := range []string{"203.0.113.0/24", "192.0.2.0/24"} {
		run(t, "ip", "-n", e.a.name, "route", "add", n, "via", e.b.underlay.String(), "dev", "coru0")
	}
	run(t, "ip", "-n", cli, "link", "set", "lo", "up")
	run(t, "ip", "-n", cli, "addr", "add", "203.0.113.10/24", "dev", "eth0")
	run(t, "ip", "-n", cli, "addr", "add", "192.0.2.20/32", "dev", "eth0")
	run(t, "ip", "-n", cli, "link", "set", "eth0", "up")
	run(t, "ip", "-n", cli, "route", "add", "default", "via", "203.0.113.1")
	ie.allowed, ie.denied = netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("192.0.2.20")
	ie.published = netip.AddrPortFrom(e.a.underlay, 80)
	ie.source = netip.MustParseAddr("100.64.0.254") // A's address in the app network
	return ie
}

// states are A's and B's states publishing to backends, the legs
// encrypted or plain.
func (ie *ingressEnv) states(encrypt bool, backends ...*guest) (compile.HostState, compile.HostState) {
	t, e, a1, source := ie.t, ie.e, ie.a1, ie.source
	in := hoststate.IngressEntry{App: "shop", Class: "web", Network: netip.MustParsePrefix("100.64.0.0/24"),
		Address: e.a.underlay, Port: 80, Protocol: "tcp", ToPort: 8080,
		Clients: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, Encrypt: encrypt, Source: source}
	a := compile.HostState{Host: "a", Address: e.a.underlay, VTEPMAC: e.a.vtepMAC, WireGuardPort: 51820, Guests: hostGuests(e.a)}
	b := compile.HostState{Host: "b", Address: e.b.underlay, VTEPMAC: e.b.vtepMAC, WireGuardPort: 51820, Guests: hostGuests(e.b)}
	for _, g := range backends {
		if g == a1 {
			in.Backends = append(in.Backends, hoststate.Backend{Task: "shop/web/0", Address: a1.addr, Server: "a", Local: true})
			continue
		}
		in.Backends = append(in.Backends, hoststate.Backend{Task: "shop/web/1", Address: g.addr, Server: "b", Encrypt: encrypt})
		if encrypt {
			a.Peers = []compile.Peer{{Server: "b", PublicKey: e.b.dp.PublicKey().String(),
				Endpoint: netip.AddrPortFrom(e.b.underlay, 51820), AllowedIPs: []netip.Prefix{p32(g.addr)}}}
			b.Peers = []compile.Peer{{Server: "a", PublicKey: e.a.dp.PublicKey().String(),
				Endpoint: netip.AddrPortFrom(e.a.underlay, 51820), AllowedIPs: []netip.Prefix{p32(source)}}}
		} else {
			a.VXLAN = []compile.VXLANEntry{{Server: "b", Underlay: e.b.underlay, MAC: e.b.vtepMAC, Guests: []netip.Addr{g.addr}}}
			b.VXLAN = []compile.VXLANEntry{{Server: "a", Underlay: e.a.underlay, MAC: e.a.vtepMAC, Guests: []netip.Addr{source}}}
		}
		b.Firewall = []compile.FirewallRule{{App: "shop", FromClass: hoststate.IngressClass, ToClass: "web", Direction: compile.Ingress,
			Sources: []netip.Addr{source}, Dests: []netip.Addr{g.addr}, Protocol: "tcp", Ports: []int{8080}, Encrypt: encrypt,
			RemoteSources: []netip.Addr{source}}}
	}
	a.Ingress = []hoststate.IngressEntry{in}
	for _, st := range []compile.HostState{a, b} {
		if err := hoststate.Validate(st, hoststate.Options{}); err != nil {
			t.Fatalf("state of %s: %v", st.Host, err)
		}
	}
	return a, b
}

// apply applies a and b.
func (ie *ingressEnv) apply(a, b compile.HostState) {
	t, e := ie.t, ie.e
	t.Helper()
	ctx := context.Background()
	if err := e.a.dp.Apply(ctx, a); err != nil {
		t.Fatalf("Apply on A: %v", err)
	}
	if err := e.b.dp.Apply(ctx, b); err != nil {
		t.Fatalf("Apply on B: %v", err)
	}
}

// testIngress: host A publishes web on its underlay address, port 80, to
// the class port 8080 of a1 (on A) and b1 (on B), for the clients of
// 203.0.113.0/24. A client namespace behind B (arriving at A by its underlay) reaches both backends
// (connections spread by the hash of their source port), a1 seeing the
// client's own address and b1 A's source address in the app network
// (SNAT), by the encrypted leg and then, re-applied, by the plain one; a
// client outside the CIDR does not connect (after a positive control
// that its packets reach A and return); a backend taken out of the entry
// gets no more connections. Strict reverse-path filtering holds
// throughout (newEnv).
func testIngress(t *testing.T) {
	ie := newIngressEnv(t)
	e, a1, b1, cli := ie.e, ie.a1, ie.b1, ie.cli
	allowed, denied, published, source := ie.allowed, ie.denied, ie.published, ie.source
	states, apply := ie.states, ie.apply
	backendServer(t, a1, 8080)
	backendServer(t, b1, 8080)
	// spread connects from the allowed client until both backends have
	// answered (the first legs to B may wait for a WireGuard handshake),
	// and returns the source each saw.
	spread := func(t *testing.T) map[netip.Addr]netip.Addr {
		t.Helper()
		seen := map[netip.Addr]netip.Addr{}
		var last error
		for deadline := time.Now().Add(20 * time.Second); len(seen) < 2 && time.Now().Before(deadline); {
			backend, src, err := ask(t, cli, allowed, published, 2*time.Second)
			if err != nil {
				last = err
				continue
			}
			seen[backend] = src
		}
		if len(seen) < 2 {
			t.Log(e.a.dump(t))
			t.Fatalf("from %s to %s: answers from %v only (last error %v); want a1 and b1", allowed, published, seen, last)
		}
		return seen
	}
	checkSources := func(t *testing.T, seen map[netip.Addr]netip.Addr) {
		t.Helper()
		if seen[a1.addr] != allowed {
			t.Errorf("the local backend saw %s, want the client's own address %s", seen[a1.addr], allowed)
		}
		if seen[b1.addr] != source {
			t.Errorf("the remote backend saw %s, want the entry host's address %s (SNAT)", seen[b1.addr], source)
		}
	}

	t.Run("encrypted", func(t *testing.T) {
		apply(states(true, a1, b1))
		vx0, _ := e.a.stats(t, VXLANName)
		wg0, _ := e.a.stats(t, e.a.wgName)
		checkSources(t, spread(t))
		vx1, _ := e.a.stats(t, VXLANName)
		wg1, _ := e.a.stats(t, e.a.wgName)
		if wg1 == wg0 || vx1 != vx0 {
			t.Fatalf("encrypted legs: %s sent %d packets, %s %d; want WireGuard only", e.a.wgName, wg1-wg0, VXLANName, vx1-vx0)
		}
	})
	t.Run("denied", func(t *testing.T) {
		// Positive control: the denied client's packets reach A and its
		// replies come back (a listener on A's own address).
		ctl := netip.AddrPortFrom(e.a.underlay, 9999)
		err := listenTCP(t, e.a.name, ctl, func(c net.Conn) { c.Close() })
		if err != nil {
			t.Fatal(err)
		}
		if err := inNS(t, cli, func() error {
			d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: denied.AsSlice()}}
			c, err := d.Dial("tcp4", ctl.String())
			if err == nil {
				c.Close()
			}
			return err
		}); err != nil {
			t.Fatalf("control: %s cannot reach A at all: %v", denied, err)
		}
		for range 3 {
			if b, _, err := ask(t, cli, denied, published, 700*time.Millisecond); err == nil {
				t.Fatalf("%s (not in the client CIDRs) reached backend %s through %s", denied, b, published)
			}
		}
	})
	t.Run("plain", func(t *testing.T) {
		apply(states(false, a1, b1))
		vx0, _ := e.a.stats(t, VXLANName)
		checkSources(t, spread(t))
		if vx1, _ := e.a.stats(t, VXLANName); vx1 == vx0 {
			t.Fatal("plain legs: nothing went by corv0")
		}
	})
	t.Run("backend-removed", func(t *testing.T) {
		apply(states(false, a1))
		for range 12 {
			backend, _, err := ask(t, cli, allowed, published, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if backend != a1.addr {
				t.Fatalf("answered by %s, which left the pool", backend)
			}
		}
	})
}
