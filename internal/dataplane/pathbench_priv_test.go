package dataplane

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/corridor-dev/corridor/internal/compile"
)

// pathBenchBytes is what one operation of BenchmarkPlainPath sends
// (CORRIDOR_BENCH_MB overrides it, for slow machines such as TCG VMs).
func pathBenchBytes() int64 {
	if mb, err := strconv.Atoi(os.Getenv("CORRIDOR_BENCH_MB")); err == nil && mb > 0 {
		return int64(mb) << 20
	}
	return 256 << 20
}

// BenchmarkPlainPath measures bulk TCP between two simulated hosts, side
// by side in one run (issue 19, item 2):
//
//	vxlan          raw VXLAN between the two host namespaces (no guest
//	               hop, no rules of ours on the way: the reference)
//	plain          a Corridor plain path, guest to guest through both
//	               hosts' data planes, as Apply makes it (flow offload on
//	               where the kernel has nftables flowtables)
//	plain-forward  the same with flow offload turned off, every packet
//	               through the forwarding path (only where offload is on:
//	               elsewhere it is "plain")
//
// each with 1 and 4 streams; MB/s is the throughput. Cases alternate
// within one run, so their ratio is what to read. Run with
//
//	go test -run '^$' -bench PlainPath -benchtime 5x ./internal/dataplane
//
// bench/offload/run-vm.sh runs it in a VM booting Debian's kernel, which
// has flowtables.
func BenchmarkPlainPath(b *testing.B) {
	p := newBenchPair(b, false)
	e, src, dst := p.e, p.src, p.dst
	p.apply(b, true)
	offload := e.a.dp.offloading()

	// Raw VXLAN by hand between the host namespaces, the plain path's
	// encapsulation without the guests, marks and rules.
	for _, x := range []struct {
		h           *host
		local, peer netip.Addr
		addr        string
	}{{e.a, e.a.underlay, e.b.underlay, "100.127.252.1/24"}, {e.b, e.b.underlay, e.a.underlay, "100.127.252.2/24"}} {
		run(b, "ip", "-n", x.h.name, "link", "add", "corbvx", "type", "vxlan", "id", "4343", "local", x.local.String(),
			"remote", x.peer.String(), "dstport", "4790", "dev", "coru0", "nolearning")
		run(b, "ip", "-n", x.h.name, "link", "set", "corbvx", "mtu", "1450", "up")
		run(b, "ip", "-n", x.h.name, "addr", "add", x.addr, "dev", "corbvx")
	}
	vxDst := netip.MustParseAddrPort("100.127.252.2:5201")
	sink(b, dst.ns, netip.AddrPortFrom(dst.addr, benchPort))
	sink(b, e.b.name, vxDst)

	n := pathBenchBytes()
	type pathCase struct {
		name, from string
		to         netip.AddrPort
		offload    bool
	}
	cases := []pathCase{
		{"vxlan", e.a.name, vxDst, offload},
		{"plain", src.ns, netip.AddrPortFrom(dst.addr, benchPort), offload},
	}
	if offload {
		cases = append(cases, pathCase{"plain-forward", src.ns, netip.AddrPortFrom(dst.addr, benchPort), false})
	}
	b.Logf("flow offload: %s (kernel has flowtables: %v); %d MB per operation", e.a.dp.offloadMode(), e.a.dp.flowtables, n>>20)
	for _, streams := range []int{1, 4} {
		for _, c := range cases {
			b.Run(fmt.Sprintf("%s/streams=%d", c.name, streams), func(b *testing.B) {
				p.apply(b, c.offload)
				b.SetBytes(n)
				for b.Loop() {
					blast(b, c.from, c.to, streams, n)
				}
			})
		}
	}
}

// benchPort is the port of the benchmarks' rules and sinks.
const benchPort = 5201

// benchPair is two simulated hosts with a guest each, src on a and dst on
// b, and their host states for one path from src to dst on benchPort,
// plain or encrypted, as the compiler would give them.
type benchPair struct {
	e        *env
	src, dst *guest
	states   [2]compile.HostState
}

// newBenchPair makes the hosts and guests and opens the data planes; an
// encrypted pair takes the kernel's WireGuard.
func newBenchPair(b *testing.B, encrypt bool) *benchPair {
	e := newEnv(b)
	e.a.kernel, e.b.kernel = encrypt, encrypt
	p := &benchPair{e: e}
	p.src = e.addGuest(e.a, "p1", "bench", "src", "100.64.0.1")
	p.dst = e.addGuest(e.b, "p2", "bench", "dst", "100.64.1.1")
	e.a.open(b)
	e.b.open(b)
	ip := func(xs ...netip.Addr) []netip.Addr { return xs }
	rule := func(dir string, remote []netip.Addr) compile.FirewallRule {
		r := fw(dir, "src", "dst", ip(p.src.addr), ip(p.dst.addr), benchPort, encrypt, remote)
		r.App = "bench"
		return r
	}
	a := compile.HostState{Host: "a", Address: e.a.underlay, VTEPMAC: e.a.vtepMAC, WireGuardPort: 51820,
		Guests:   hostGuests(e.a),
		Routes:   []compile.Route{{Sources: ip(p.src.addr), Dest: p.dst.addr, Server: "b", Encrypt: encrypt}},
		Firewall: []compile.FirewallRule{rule(compile.Egress, nil)},
	}
	bs := compile.HostState{Host: "b", Address: e.b.underlay, VTEPMAC: e.b.vtepMAC, WireGuardPort: 51820,
		Guests:   hostGuests(e.b),
		Firewall: []compile.FirewallRule{rule(compile.Ingress, ip(p.src.addr))},
	}
	if encrypt {
		a.Peers = []compile.Peer{{Server: "b", PublicKey: e.b.dp.PublicKey().String(),
			Endpoint: netip.AddrPortFrom(e.b.underlay, 51820), AllowedIPs: []netip.Prefix{p32(p.dst.addr)}}}
		bs.Peers = []compile.Peer{{Server: "a", PublicKey: e.a.dp.PublicKey().String(),
			Endpoint: netip.AddrPortFrom(e.a.underlay, 51820), AllowedIPs: []netip.Prefix{p32(p.src.addr)}}}
	} else {
		a.VXLAN = []compile.VXLANEntry{{Server: "b", Underlay: e.b.underlay, MAC: e.b.vtepMAC, Guests: ip(p.dst.addr)}}
		bs.VXLAN = []compile.VXLANEntry{{Server: "a", Underlay: e.a.underlay, MAC: e.a.vtepMAC, Guests: ip(p.src.addr)}}
	}
	p.states = [2]compile.HostState{a, bs}
	return p
}

// apply applies both host states, with flow offload where offload is set
// and the kernel has flowtables.
func (p *benchPair) apply(b *testing.B, offload bool) {
	b.Helper()
	for i, h := range []*host{p.e.a, p.e.b} {
		h.dp.mu.Lock()
		h.dp.cfg.NoFlowOffload = !offload
		h.dp.mu.Unlock()
		if err := h.dp.Apply(context.Background(), p.states[i]); err != nil {
			b.Fatalf("Apply on %s: %v", p.states[i].Host, err)
		}
	}
}

// sink accepts TCP connections on addr in namespace ns and reads each to
// its end, then closes it: the sender's read of EOF says all arrived.
func sink(b *testing.B, ns string, addr netip.AddrPort) {
	b.Helper()
	err := listenTCP(b, ns, addr, func(c net.Conn) {
		go func() {
			defer c.Close()
			io.Copy(io.Discard, c)
		}()
	})
	if err != nil {
		b.Fatalf("listen in %s on %s: %v", ns, addr, err)
	}
}

// blast sends n bytes to addr from namespace ns over streams connections
// at once, and returns when the far end has read them all.
func blast(b *testing.B, ns string, addr netip.AddrPort, streams int, n int64) {
	conns := make([]*net.TCPConn, streams)
	err := inNS(b, ns, func() error {
		for i := range conns {
			c, err := net.Dial("tcp4", addr.String())
			if err != nil {
				return err
			}
			conns[i] = c.(*net.TCPConn)
		}
		return nil
	})
	if err != nil {
		b.Fatalf("dial %s from %s: %v", addr, ns, err)
	}
	buf := make([]byte, 1<<20)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for _, c := range conns {
		wg.Go(func() {
			defer c.Close()
			left := n / int64(streams)
			for left > 0 {
				k, err := c.Write(buf[:min(int64(len(buf)), left)])
				if err != nil {
					errs <- err
					return
				}
				left -= int64(k)
			}
			c.CloseWrite()
			io.Copy(io.Discard, c) // until the sink closes: all was read
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("send to %s from %s: %v", addr, ns, err)
	}
}

// BenchmarkEncryptedPath measures bulk TCP over Corridor's encrypted path
// with the kernel's WireGuard against the same kernel WireGuard set up by
// hand between the two host namespaces (no guest hop, no rules of ours):
// issue 19, item 1, where the kernel has WireGuard. Where it has not, the
// benchmark is skipped: bench/datapath/run.sh compares the user-space
// path with wireguard-go by hand. bench/offload/run-vm.sh runs it in a VM
// booting Debian's kernel, which has WireGuard.
func BenchmarkEncryptedPath(b *testing.B) {
	needKernelWireGuard(b, "bench/datapath/run.sh compares the user-space path with wireguard-go by hand")
	p := newBenchPair(b, true)
	e := p.e
	for _, h := range []*host{e.a, e.b} {
		run(b, "ip", "-n", h.name, "link", "add", "corbwg", "type", "wireguard")
	}
	p.apply(b, false)
	src, dst := p.src, p.dst

	// Kernel WireGuard by hand: the same MTU as Corridor's device (the
	// underlay's less 80), port 51901, one peer each.
	keys := [2]wgtypes.Key{}
	for i := range keys {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			b.Fatal(err)
		}
		keys[i] = k
	}
	hosts := []*host{e.a, e.b}
	for i, h := range hosts {
		peer := hosts[1-i]
		listen := 51901
		err := inNS(b, h.name, func() error {
			c, err := wgctrl.New()
			if err != nil {
				return err
			}
			defer c.Close()
			return c.ConfigureDevice("corbwg", wgtypes.Config{PrivateKey: &keys[i], ListenPort: &listen, Peers: []wgtypes.PeerConfig{{
				PublicKey:  keys[1-i].PublicKey(),
				Endpoint:   &net.UDPAddr{IP: peer.underlay.AsSlice(), Port: 51901},
				AllowedIPs: []net.IPNet{{IP: net.IPv4(100, 127, 250, byte(2-i)), Mask: net.CIDRMask(32, 32)}},
			}}})
		})
		if err != nil {
			b.Fatalf("configure WireGuard by hand in %s: %v", h.name, err)
		}
		run(b, "ip", "-n", h.name, "link", "set", "corbwg", "mtu", "1420", "up")
		run(b, "ip", "-n", h.name, "addr", "add", fmt.Sprintf("100.127.250.%d/24", i+1), "dev", "corbwg")
	}
	wgDst := netip.MustParseAddrPort("100.127.250.2:5201")
	sink(b, dst.ns, netip.AddrPortFrom(dst.addr, benchPort))
	sink(b, e.b.name, wgDst)

	n := pathBenchBytes()
	cases := []struct {
		name, from string
		to         netip.AddrPort
	}{
		{"wireguard", e.a.name, wgDst},
		{"encrypted", src.ns, netip.AddrPortFrom(dst.addr, benchPort)},
	}
	// The first handshake of each tunnel, outside the timings.
	for _, c := range cases {
		blast(b, c.from, c.to, 1, 1<<20)
	}
	for _, streams := range []int{1, 4} {
		for _, c := range cases {
			b.Run(fmt.Sprintf("%s/streams=%d", c.name, streams), func(b *testing.B) {
				b.SetBytes(n)
				for b.Loop() {
					blast(b, c.from, c.to, streams, n)
				}
			})
		}
	}
}
