package hoststate_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"slices"
	"testing"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// sameAsMarshal fails t unless st.Encode writes what json.Marshal writes.
func sameAsMarshal(t *testing.T, name string, st hoststate.State) {
	t.Helper()
	// By reflection: State's MarshalJSON is the encoder under test.
	type reflected hoststate.State
	want, err := json.Marshal(reflected(st.Filled()))
	if err != nil {
		t.Fatal(err)
	}
	if viaMethod, err := json.Marshal(st); err != nil || !bytes.Equal(viaMethod, want) {
		t.Errorf("%s: json.Marshal (%v) differs from the reflected encoding:\n got %.300s\nwant %.300s", name, err, viaMethod, want)
	}
	got, err := st.Encode()
	if err != nil {
		t.Fatalf("%s: Encode: %v", name, err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Errorf("%s: Encode differs from json.Marshal at byte %d:\n got …%s\nwant …%s", name, i, got[max(0, i-40):min(len(got), i+80)], want[max(0, i-40):min(len(want), i+80)])
	}
	if got, err := st.AppendJSON([]byte("prefix")); err != nil || !bytes.Equal(got, append([]byte("prefix"), want...)) {
		t.Errorf("%s: AppendJSON does not append to what it is given (%v)", name, err)
	}
}

// TestEncodeSameAsMarshal: the hand-written encoder of host states writes
// the bytes json.Marshal writes, for a valid state, the empty one, states
// with every optional field set and unset, nil against empty lists, and
// strings and addresses with what JSON must escape. (The compiled states
// of every golden case and of a sized fleet are checked in
// internal/compile, TestHostStateEncode.)
func TestEncodeSameAsMarshal(t *testing.T) {
	sameAsMarshal(t, "valid", valid())
	sameAsMarshal(t, "zero", hoststate.State{})
	sameAsMarshal(t, "empty", hoststate.Empty("s1"))

	st := valid()
	web, db := st.Guests[0].Address, st.Routes[0].Dest
	st.KeyGeneration, st.RotationPhase, st.PublicKey = 3, hoststate.RotationAnnounce, "a+b/c="
	st.Peers = append(st.Peers,
		hoststate.Peer{Server: "s3", PublicKey: "k3", NextPublicKey: "k3next", Endpoint: netip.MustParseAddrPort("[fd00::3]:51820"), AllowedIPs: []netip.Prefix{}},
		hoststate.Peer{Server: "s<4>", PublicKey: "k&4"},
		hoststate.Peer{Server: "ü5", AllowedIPs: []netip.Prefix{{}, netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("::ffff:1.2.3.4/128")}})
	st.VXLAN = []hoststate.VXLANEntry{
		{Server: "s2", Underlay: netip.MustParseAddr("198.18.0.2"), MAC: "02:c0:c6:12:00:02", Guests: []netip.Addr{db}},
		{Server: "s3", MAC: "\"quoted\"", Guests: []netip.Addr{}},
		{Server: "s4\n", Underlay: netip.MustParseAddr("fe80::1%eth<0>"), Guests: []netip.Addr{netip.MustParseAddr("fe80::2%a\\b"), {}}},
	}
	shared := []netip.Addr{web, netip.MustParseAddr("100.64.0.11")}
	st.Routes = append(st.Routes,
		hoststate.Route{Sources: shared, Dest: netip.MustParseAddr("100.64.0.30"), Server: "s2"},
		hoststate.Route{Sources: shared, Dest: netip.MustParseAddr("100.64.0.31"), Server: "s2", Encrypt: true},
		hoststate.Route{Sources: shared[:1], Dest: netip.MustParseAddr("100.64.0.32"), Server: "s3"},
		hoststate.Route{Sources: nil, Dest: netip.MustParseAddr("100.64.0.33"), Server: "s3"},
		hoststate.Route{Sources: []netip.Addr{}, Dest: netip.MustParseAddr("100.64.0.34"), Server: "s\u2028"},
		hoststate.Route{Sources: shared, Dest: netip.MustParseAddr("100.64.0.35"), Server: "s2"},
		hoststate.Route{Sources: []netip.Addr{netip.MustParseAddr("fe80::9%<z>")}, Server: "\xff"})
	st.Firewall = append(st.Firewall,
		hoststate.FirewallRule{App: "shop", FromClass: "db", ToApp: "other", ToClass: "web", Direction: hoststate.Ingress,
			Sources: []netip.Addr{db, web}, Dests: []netip.Addr{web}, Protocol: spec.ProtoUDP, Ports: []int{1, 65535},
			RemoteSources: []netip.Addr{db}},
		hoststate.FirewallRule{App: "a&b", Ports: []int{}, RemoteSources: []netip.Addr{}, Sources: []netip.Addr{}})
	st.Outbound = []hoststate.Outbound{{App: "shop", Class: "web", Sources: []netip.Addr{web}, Dests: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, Protocol: spec.ProtoTCP, Ports: []int{443}}}
	st.Ingress = []hoststate.IngressEntry{{App: "shop", Class: "web", Address: netip.MustParseAddr("198.18.0.1"), Port: 80, ToPort: 8080, Source: web,
		Backends: []hoststate.Backend{{Task: "shop/web/0", Address: web, Server: "s1", Local: true}}}}
	st.Schema, st.Staged, st.Hold = hoststate.SchemaMove, []hoststate.Guest{staged(&st)}, []netip.Addr{db}
	sameAsMarshal(t, "full", st)

	// Each optional part on its own, and nil lists where the compiler
	// writes empty ones.
	for name, f := range map[string]func(*hoststate.State){
		"no schema": func(s *hoststate.State) { s.Schema = "" },
		"nil lists": func(s *hoststate.State) { s.Guests, s.Peers, s.VXLAN, s.Routes, s.Firewall = nil, nil, nil, nil, nil },
		"empty lists": func(s *hoststate.State) {
			s.Guests, s.Peers, s.VXLAN, s.Routes, s.Firewall = []hoststate.Guest{}, []hoststate.Peer{}, nil, []hoststate.Route{}, []hoststate.FirewallRule{}
		},
		"no extras": func(s *hoststate.State) { s.Outbound, s.Ingress, s.Staged, s.Hold = nil, nil, nil, nil },
		"empty extras": func(s *hoststate.State) {
			s.Outbound, s.Ingress, s.Staged, s.Hold = []hoststate.Outbound{}, []hoststate.IngressEntry{}, []hoststate.Guest{}, []netip.Addr{}
		},
		"odd host": func(s *hoststate.State) {
			s.Host, s.VTEPMAC, s.RotationPhase, s.PublicKey = "h<1>", "m&", "\x01", "\u2029"
		},
		"ipv6":     func(s *hoststate.State) { s.Address = netip.MustParseAddr("fd00::1"); s.WireGuardPort = -1 },
		"zero ids": func(s *hoststate.State) { s.Address, s.KeyGeneration = netip.Addr{}, -7 },
	} {
		s := st
		f(&s)
		sameAsMarshal(t, name, s)
	}
}

// Same holds for a state and its copy (the same lists), and for nothing
// that may encode otherwise: any scalar changed, any list replaced by an
// equal copy, shortened, or nil against empty.
func TestSame(t *testing.T) {
	a := valid()
	a.Outbound = []hoststate.Outbound{{App: "shop"}}
	a.Ingress = []hoststate.IngressEntry{{App: "shop"}}
	a.Staged, a.Hold = []hoststate.Guest{staged(&a)}, []netip.Addr{a.Routes[0].Dest}
	a.VXLAN = []hoststate.VXLANEntry{{Server: "s2"}}
	b := a
	if !a.Same(&b) {
		t.Fatal("a state and its copy are not the same")
	}
	e := hoststate.Empty("s1")
	if e2 := e; !e.Same(&e2) {
		t.Fatal("two empty states are not the same")
	}
	for name, f := range map[string]func(*hoststate.State){
		"schema":        func(s *hoststate.State) { s.Schema = hoststate.SchemaMove },
		"host":          func(s *hoststate.State) { s.Host = "s9" },
		"address":       func(s *hoststate.State) { s.Address = netip.MustParseAddr("198.18.0.9") },
		"vtepMAC":       func(s *hoststate.State) { s.VTEPMAC = "02:00:00:00:00:09" },
		"wireguardPort": func(s *hoststate.State) { s.WireGuardPort++ },
		"keyGeneration": func(s *hoststate.State) { s.KeyGeneration++ },
		"rotationPhase": func(s *hoststate.State) { s.RotationPhase = hoststate.RotationCommit },
		"publicKey":     func(s *hoststate.State) { s.PublicKey = "k" },
		"guests":        func(s *hoststate.State) { s.Guests = slices.Clone(s.Guests) },
		"peers":         func(s *hoststate.State) { s.Peers = slices.Clone(s.Peers) },
		"vxlan":         func(s *hoststate.State) { s.VXLAN = slices.Clone(s.VXLAN) },
		"routes":        func(s *hoststate.State) { s.Routes = slices.Clone(s.Routes) },
		"firewall":      func(s *hoststate.State) { s.Firewall = slices.Clone(s.Firewall) },
		"outbound":      func(s *hoststate.State) { s.Outbound = slices.Clone(s.Outbound) },
		"ingress":       func(s *hoststate.State) { s.Ingress = slices.Clone(s.Ingress) },
		"staged":        func(s *hoststate.State) { s.Staged = slices.Clone(s.Staged) },
		"hold":          func(s *hoststate.State) { s.Hold = slices.Clone(s.Hold) },
		"routes cut":    func(s *hoststate.State) { s.Routes = s.Routes[:0] },
		"peers nil":     func(s *hoststate.State) { s.Peers = nil },
	} {
		c := a
		f(&c)
		if a.Same(&c) || c.Same(&a) {
			t.Errorf("%s changed: still the same", name)
		}
	}
	n1, n2 := hoststate.Empty("s1"), hoststate.Empty("s1")
	n1.Routes, n2.Routes = nil, []hoststate.Route{}
	if n1.Same(&n2) {
		t.Error("nil and empty routes (null and []) are the same")
	}
}
