package dataplane

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
)

// BenchmarkIngress measures a published port against a direct plain path,
// with iperf3 (throughput, 1 and 4 streams) and a Go dialer (new TCP
// connections per second, each one connected and closed), from the
// outside client of newIngressEnv:
//
//	direct       client -> iperf3 on A's own underlay address (no DNAT, no leg)
//	local        client -> A:80 -> DNAT -> a1 on A
//	leg-plain    client -> A:80 -> DNAT -> VXLAN leg -> b1 on B (SNAT)
//	leg-encrypt  client -> A:80 -> DNAT -> WireGuard leg (wireguard-go) -> b1
//	guest-plain  a1 -> b1 by the plain path (no ingress), for reference
//
// Each sub-benchmark reports Gbit/s (1 and 4 streams) and conn/s; the
// iperf3 runs last CORRIDOR_BENCH_SECONDS (default 2) each. Run with:
//
//	go test -run '^$' -bench '^BenchmarkIngress$' -benchtime=1x ./internal/dataplane
func BenchmarkIngress(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 is not installed (make deps)")
	}
	secs := 2
	if v, err := strconv.Atoi(os.Getenv("CORRIDOR_BENCH_SECONDS")); err == nil && v > 0 {
		secs = v
	}
	ie := newIngressEnv(b)
	e := ie.e
	// iperf3 servers: in both guests on the class port, on A's underlay
	// address for the direct path.
	startIperf := func(ns string, bind netip.Addr, port int) {
		cmd := exec.Command("ip", "netns", "exec", ns, "iperf3", "-s", "-B", bind.String(), "-p", strconv.Itoa(port))
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		ok := false
		for deadline := time.Now().Add(5 * time.Second); !ok && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			ok = inNS(b, ns, func() error {
				c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(bind, uint16(port)).String(), time.Second)
				if err == nil {
					c.Close()
				}
				return err
			}) == nil
		}
		if !ok {
			b.Fatalf("iperf3 in %s did not listen on %s:%d", ns, bind, port)
		}
	}
	startIperf(ie.a1.ns, ie.a1.addr, 8080)
	startIperf(ie.b1.ns, ie.b1.addr, 8080)
	startIperf(e.a.name, e.a.underlay, 5201)
	// Accept-and-close listeners for the connection rate (iperf3 resets
	// a connection that does not speak its protocol): port 8081 in the
	// guests, published as port 81; 5202 on A's underlay address.
	closer := func(c net.Conn) { c.Close() }
	for _, l := range []struct {
		ns string
		ap netip.AddrPort
	}{{ie.a1.ns, netip.AddrPortFrom(ie.a1.addr, 8081)}, {ie.b1.ns, netip.AddrPortFrom(ie.b1.addr, 8081)}, {e.a.name, netip.AddrPortFrom(e.a.underlay, 5202)}} {
		if err := listenTCP(b, l.ns, l.ap, closer); err != nil {
			b.Fatal(err)
		}
	}
	// states adds port 81 -> 8081 beside 80 -> 8080.
	states := func(encrypt bool, backends ...*guest) (compile.HostState, compile.HostState) {
		a, bs := ie.states(encrypt, backends...)
		in := a.Ingress[0]
		in.Port, in.ToPort = 81, 8081
		a.Ingress = append(a.Ingress, in)
		for i := range bs.Firewall {
			bs.Firewall[i].Ports = []int{8080, 8081}
		}
		return a, bs
	}

	iperf := func(b *testing.B, ns string, src netip.Addr, to netip.AddrPort, streams int) float64 {
		args := []string{"netns", "exec", ns, "iperf3", "-J", "-c", to.Addr().String(), "-p", strconv.Itoa(int(to.Port())),
			"-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams)}
		if src.IsValid() {
			args = append(args, "-B", src.String())
		}
		out, err := exec.Command("ip", args...).Output()
		if err != nil {
			b.Fatalf("iperf3 to %s: %v\n%s", to, err, out)
		}
		var r struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			b.Fatal(err)
		}
		return r.End.SumReceived.BitsPerSecond / 1e9
	}
	connRate := func(b *testing.B, ns string, src netip.Addr, to netip.AddrPort) float64 {
		n := 0
		start := time.Now()
		err := inNS(b, ns, func() error {
			for time.Since(start) < time.Duration(secs)*time.Second {
				d := net.Dialer{Timeout: 2 * time.Second}
				if src.IsValid() {
					d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
				}
				c, err := d.Dial("tcp4", to.String())
				if err != nil {
					return err
				}
				c.Close()
				n++
			}
			return nil
		})
		if err != nil {
			b.Fatalf("connections to %s: %v", to, err)
		}
		return float64(n) / time.Since(start).Seconds()
	}
	measure := func(b *testing.B, ns string, src netip.Addr, to, conns netip.AddrPort) {
		for b.Loop() {
			g1 := iperf(b, ns, src, to, 1)
			g4 := iperf(b, ns, src, to, 4)
			cps := connRate(b, ns, src, conns)
			b.ReportMetric(g1, "Gbit/s-1")
			b.ReportMetric(g4, "Gbit/s-4")
			b.ReportMetric(cps, "conn/s")
		}
	}
	b.Run("direct", func(b *testing.B) {
		ie.apply(states(true, ie.a1))
		measure(b, ie.cli, ie.allowed, netip.AddrPortFrom(e.a.underlay, 5201), netip.AddrPortFrom(e.a.underlay, 5202))
	})
	b.Run("local", func(b *testing.B) {
		ie.apply(states(true, ie.a1))
		measure(b, ie.cli, ie.allowed, ie.published, netip.AddrPortFrom(ie.published.Addr(), 81))
	})
	b.Run("leg-plain", func(b *testing.B) {
		ie.apply(states(false, ie.b1))
		measure(b, ie.cli, ie.allowed, ie.published, netip.AddrPortFrom(ie.published.Addr(), 81))
	})
	b.Run("leg-encrypt", func(b *testing.B) {
		ie.apply(states(true, ie.b1))
		// The first leg waits for the WireGuard handshake.
		for deadline := time.Now().Add(10 * time.Second); ; {
			err := inNS(b, ie.cli, func() error {
				d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: ie.allowed.AsSlice()}}
				c, err := d.Dial("tcp4", ie.published.String())
				if err == nil {
					c.Close()
				}
				return err
			})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("the encrypted leg never connected: %v", err)
			}
		}
		measure(b, ie.cli, ie.allowed, ie.published, netip.AddrPortFrom(ie.published.Addr(), 81))
	})
	b.Run("guest-plain", func(b *testing.B) {
		a, bs := states(false, ie.b1)
		a.VXLAN[0].Guests = []netip.Addr{ie.b1.addr}
		bs.VXLAN[0].Guests = append(bs.VXLAN[0].Guests, ie.a1.addr)
		a.Routes = append(a.Routes, compile.Route{Sources: []netip.Addr{ie.a1.addr}, Dest: ie.b1.addr, Server: "b"})
		a.Firewall = append(a.Firewall, fw("egress", "web", "web", []netip.Addr{ie.a1.addr}, []netip.Addr{ie.b1.addr}, 8080, false, nil), fw("egress", "web", "web", []netip.Addr{ie.a1.addr}, []netip.Addr{ie.b1.addr}, 8081, false, nil))
		bs.Firewall = append(bs.Firewall, fw("ingress", "web", "web", []netip.Addr{ie.a1.addr}, []netip.Addr{ie.b1.addr}, 8080, false, []netip.Addr{ie.a1.addr}), fw("ingress", "web", "web", []netip.Addr{ie.a1.addr}, []netip.Addr{ie.b1.addr}, 8081, false, []netip.Addr{ie.a1.addr}))
		ie.apply(a, bs)
		measure(b, ie.a1.ns, netip.Addr{}, netip.AddrPortFrom(ie.b1.addr, 8080), netip.AddrPortFrom(ie.b1.addr, 8081))
	})
}
