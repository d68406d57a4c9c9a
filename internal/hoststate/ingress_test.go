package hoststate

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// ingressState is an entry host with a local web task and one on server
// b reached by WireGuard.
func ingressState() State {
	local := netip.MustParseAddr("100.64.0.1")
	remote := netip.MustParseAddr("100.64.0.2")
	return State{
		Schema: Schema, Host: "a", Address: netip.MustParseAddr("198.18.0.11"), VTEPMAC: "02:c0:c6:12:00:0b", WireGuardPort: 51820,
		Guests: []Guest{{Task: "shop/web/0", App: "shop", Class: "web", Address: local, Network: netip.MustParsePrefix("100.64.0.0/24"),
			HostIf: "corg0000000001", Spec: spec.Guest{Runtime: spec.RuntimeNetns}}},
		Peers: []Peer{{Server: "b", PublicKey: "21F5w/hQYasJQm9umsBtfdCODFYIzpzp0QcQQEWG/Vs=",
			Endpoint: netip.MustParseAddrPort("198.18.0.12:51820"), AllowedIPs: []netip.Prefix{netip.PrefixFrom(remote, 32)}}},
		Ingress: []IngressEntry{{App: "shop", Class: "web", Network: netip.MustParsePrefix("100.64.0.0/24"),
			Address: netip.MustParseAddr("198.18.0.11"), Port: 80, Protocol: "tcp", ToPort: 80,
			Clients: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, Encrypt: true, Source: netip.MustParseAddr("100.64.0.254"),
			Backends: []Backend{{Task: "shop/web/0", Address: local, Server: "a", Local: true},
				{Task: "shop/web/1", Address: remote, Server: "b", Encrypt: true}}}},
	}
}

func TestIngressValidates(t *testing.T) {
	if err := Validate(ingressState(), Options{ServerAddrs: []netip.Addr{netip.MustParseAddr("198.18.0.11"), netip.MustParseAddr("198.18.0.12")}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(st *State)
		want string
	}{
		{"client in the overlay", func(st *State) { st.Ingress[0].Clients[0] = netip.MustParsePrefix("100.64.0.0/16") }, "ingress[0].clients[0]"},
		{"client holds a server", func(st *State) { st.Ingress[0].Clients[0] = netip.MustParsePrefix("198.18.0.0/24") }, "ingress[0].clients[0]"},
		{"encrypted leg without its peer", func(st *State) { st.Peers = nil }, "ingress[0].backends[1].address"},
		{"leg plain but the port encrypted", func(st *State) { st.Ingress[0].Backends[1].Encrypt = false }, "ingress[0].backends[1].encrypt"},
		{"local backend not a guest here", func(st *State) { st.Ingress[0].Backends[0].Address = netip.MustParseAddr("100.64.0.9") }, "ingress[0].backends[0].address"},
		{"source is a guest", func(st *State) { st.Ingress[0].Source = netip.MustParseAddr("100.64.0.1") }, "ingress[0].source"},
		{"source outside the network", func(st *State) { st.Ingress[0].Source = netip.MustParseAddr("100.64.1.1") }, "ingress[0].source"},
		{"published twice", func(st *State) { st.Ingress = append(st.Ingress, st.Ingress[0]) }, "ingress[1].port"},
		{"published in the overlay", func(st *State) { st.Ingress[0].Address = netip.MustParseAddr("100.64.0.200") }, "ingress[0].address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := ingressState()
			tc.edit(&st)
			err := Validate(st, Options{ServerAddrs: []netip.Addr{netip.MustParseAddr("198.18.0.11"), netip.MustParseAddr("198.18.0.12")}})
			var fe *FieldError
			if !errors.As(err, &fe) || !strings.HasPrefix(fe.Field, tc.want) {
				t.Fatalf("error %v, want one on %s", err, tc.want)
			}
		})
	}
}
