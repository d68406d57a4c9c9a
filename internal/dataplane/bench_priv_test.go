package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/corridor-dev/corridor/internal/compile"
)

// bigState is a host with 10 guests, 1,000 WireGuard peers (one remote guest
// each, encrypted) and 1,000 VXLAN hosts (one remote guest each, plain):
// 2,000 routes, 1,000 FDB and neighbour entries, 2,000 marked pairs and
// 20 firewall rules.
func bigState(b *testing.B, h *host) compile.HostState {
	st := compile.HostState{Host: "big", Address: h.underlay, VTEPMAC: h.vtepMAC, WireGuardPort: 51820}
	var locals []netip.Addr
	for i := range 10 {
		g := netip.AddrFrom4([4]byte{100, 64, 0, byte(i + 1)})
		locals = append(locals, g)
		st.Guests = append(st.Guests, compile.Guest{App: "big", Class: fmt.Sprintf("c%d", i), Address: g, HostIf: fmt.Sprintf("corgbig%d", i)})
	}
	var encDests, plainDests []netip.Addr
	for i := range 1000 {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			b.Fatal(err)
		}
		remote := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		enc := netip.AddrFrom4([4]byte{100, 65, byte(i >> 8), byte(i)})
		plain := netip.AddrFrom4([4]byte{100, 66, byte(i >> 8), byte(i)})
		encDests, plainDests = append(encDests, enc), append(plainDests, plain)
		st.Peers = append(st.Peers, compile.Peer{Server: fmt.Sprintf("s%d", i), PublicKey: k.PublicKey().String(),
			Endpoint: netip.AddrPortFrom(remote, 51820), AllowedIPs: []netip.Prefix{netip.PrefixFrom(enc, 32)}})
		st.VXLAN = append(st.VXLAN, compile.VXLANEntry{Server: fmt.Sprintf("s%d", i), Underlay: remote,
			MAC: fmt.Sprintf("02:01:00:00:%02x:%02x", i>>8, i&0xff), Guests: []netip.Addr{plain}})
		src := locals[i%len(locals)]
		st.Routes = append(st.Routes,
			compile.Route{Sources: []netip.Addr{src}, Dest: enc, Encrypt: true},
			compile.Route{Sources: []netip.Addr{src}, Dest: plain, Encrypt: false})
	}
	for i := range 10 {
		st.Firewall = append(st.Firewall,
			compile.FirewallRule{App: "big", FromClass: fmt.Sprintf("c%d", i), ToClass: "enc", Direction: compile.Egress,
				Sources: locals[i : i+1], Dests: encDests, Protocol: "tcp", Ports: []int{443}, Encrypt: true},
			compile.FirewallRule{App: "big", FromClass: fmt.Sprintf("c%d", i), ToClass: "plain", Direction: compile.Egress,
				Sources: locals[i : i+1], Dests: plainDests, Protocol: "tcp", Ports: []int{80, 8080}})
	}
	return st
}

// BenchmarkApply1000 measures Apply on an empty host with 1,000 peers and
// 1,000 VXLAN hosts ("initial"), and Apply again with the same state
// ("noop"). Run once with: go test -run '^$' -bench Apply1000 -benchtime=1x
func BenchmarkApply1000(b *testing.B) {
	e := newEnv(b)
	e.a.open(b)
	st := bigState(b, e.a)
	ctx := context.Background()
	b.Run("initial", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			if err := e.a.dp.Remove(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := e.a.dp.Apply(ctx, st); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("noop", func(b *testing.B) {
		if err := e.a.dp.Apply(ctx, st); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := e.a.dp.Apply(ctx, st); err != nil {
				b.Fatal(err)
			}
			if c := e.a.dp.LastChanges(); len(c) != 0 {
				b.Fatalf("no-op Apply changed %d things, first %q", len(c), c[0])
			}
		}
	})
}
