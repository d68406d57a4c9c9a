package hoststate_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/hoststate"
)

// withLists is st with the peers and VXLAN entries its route groups call
// for, their lists written the slow way from the groups' expansion
// (bruteExpand): a peer per server reached encrypted, a VXLAN entry per
// server reached in plain, by server name, each list by address.
func withLists(st hoststate.State) hoststate.State {
	enc := map[string][]netip.Prefix{}
	plain := map[string][]netip.Addr{}
	for _, r := range bruteExpand(st) {
		if r.Encrypt {
			if p := netip.PrefixFrom(r.Dest, 32); !slices.Contains(enc[r.Server], p) {
				enc[r.Server] = append(enc[r.Server], p)
			}
		} else if !slices.Contains(plain[r.Server], r.Dest) {
			plain[r.Server] = append(plain[r.Server], r.Dest)
		}
	}
	st.Peers, st.VXLAN = []hoststate.Peer{}, []hoststate.VXLANEntry{}
	for i := range 10 {
		name := fmt.Sprint("h", i)
		var key [32]byte
		key[0] = byte(1 + i)
		under := netip.AddrFrom4([4]byte{198, 18, 0, byte(1 + i)})
		if ips := enc[name]; len(ips) > 0 {
			slices.SortFunc(ips, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
			st.Peers = append(st.Peers, hoststate.Peer{Server: name, PublicKey: base64.StdEncoding.EncodeToString(key[:]),
				Endpoint: netip.AddrPortFrom(under, 51820), AllowedIPs: ips})
		}
		if gs := plain[name]; len(gs) > 0 {
			slices.SortFunc(gs, netip.Addr.Compare)
			st.VXLAN = append(st.VXLAN, hoststate.VXLANEntry{Server: name, Underlay: under, MAC: fmt.Sprintf("02:c0:c6:12:00:%02x", 1+i), Guests: gs})
		}
	}
	return st
}

// derivedOf is full without its lists, derived (as the compiler makes it).
func derivedOf(full hoststate.State) hoststate.State {
	d := full
	d.Derived = true
	d.Peers = slices.Clone(full.Peers)
	for i := range d.Peers {
		d.Peers[i].AllowedIPs = nil
	}
	d.VXLAN = slices.Clone(full.VXLAN)
	for i := range d.VXLAN {
		d.VXLAN[i].Guests = nil
	}
	return d
}

// checkDerived fails t unless the derived form of full gives full's lists
// (Filled, PeerLists, VXLANLists), is refused by nothing, encodes for
// every agent of an older schema to full's very bytes, and for an agent
// of 1.6 to a derived state of schema 1.6 that gives the same lists.
func checkDerived(t *testing.T, name string, full hoststate.State) {
	t.Helper()
	d := derivedOf(full)
	if err := hoststate.CheckDerived(&d); err != nil {
		t.Fatalf("%s: CheckDerived: %v", name, err)
	}
	same := func(what string, got hoststate.State) {
		t.Helper()
		if g, w := mustMarshal(t, got.Peers), mustMarshal(t, full.Peers); !bytes.Equal(g, w) {
			t.Fatalf("%s, %s: peers\n got %s\nwant %s", name, what, g, w)
		}
		if g, w := mustMarshal(t, got.VXLAN), mustMarshal(t, full.VXLAN); !bytes.Equal(g, w) {
			t.Fatalf("%s, %s: VXLAN\n got %s\nwant %s", name, what, g, w)
		}
	}
	f := d.Filled()
	if f.Derived {
		t.Fatalf("%s: Filled is still derived", name)
	}
	same("Filled", f)
	pl, vl := d.PeerLists(), d.VXLANLists()
	for i := range full.Peers {
		if !slices.Equal(pl[i], full.Peers[i].AllowedIPs) {
			t.Fatalf("%s: PeerLists[%d] = %v, want %v", name, i, pl[i], full.Peers[i].AllowedIPs)
		}
	}
	for i := range full.VXLAN {
		if !slices.Equal(vl[i], full.VXLAN[i].Guests) {
			t.Fatalf("%s: VXLANLists[%d] = %v, want %v", name, i, vl[i], full.VXLAN[i].Guests)
		}
	}
	for _, schema := range []string{"", "1.0", "1.3", "1.4", "1.5", "x", "2.6"} {
		got, err1 := d.EncodeFor(schema)
		want, err2 := full.EncodeFor(schema)
		if err1 != nil || err2 != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: EncodeFor(%q) (%v, %v):\n got %s\nwant %s", name, schema, err1, err2, got, want)
		}
		if bytes.Contains(got, []byte("derived")) {
			t.Fatalf("%s: EncodeFor(%q) writes the derived form: %s", name, schema, got)
		}
		if d.WrittenAs(schema) == hoststate.SchemaDerived {
			t.Fatalf("%s: WrittenAs(%q) is the derived form", name, schema)
		}
	}
	if g, w := mustMarshal(t, d), mustMarshal(t, full); !bytes.Equal(g, w) {
		t.Fatalf("%s: json.Marshal of the derived state\n got %s\nwant %s", name, g, w)
	}
	for _, schema := range []string{"1.6", "1.9"} {
		b, err := d.EncodeFor(schema)
		if err != nil {
			t.Fatal(err)
		}
		if d.WrittenAs(schema) != hoststate.SchemaDerived || !bytes.Contains(b, []byte(`"schema":"1.6"`)) || !bytes.Contains(b, []byte(`"derived":true`)) {
			t.Fatalf("%s: EncodeFor(%q) = %s", name, schema, b)
		}
		var back hoststate.State
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if !back.Derived || back.Schema != hoststate.SchemaDerived {
			t.Fatalf("%s: decoded 1.6 state: derived %v, schema %s", name, back.Derived, back.Schema)
		}
		if err := hoststate.CheckDerived(&back); err != nil {
			t.Fatalf("%s: decoded 1.6 state: %v", name, err)
		}
		same("decoded 1.6 state, filled", back.Filled())
	}
	// A state that is not derived is written for a 1.6 agent as for 1.5.
	a, _ := full.EncodeFor("1.6")
	b, _ := full.EncodeFor("1.5")
	if !bytes.Equal(a, b) || full.WrittenAs("1.6") == hoststate.SchemaDerived {
		t.Fatalf("%s: a full state for a 1.6 agent:\n got %s\nwant %s", name, a, b)
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDerivedLists: a derived state (schema 1.6) gives, from its route
// groups, the peers' and VXLAN entries' lists written the slow way, on
// groupsState (two apps, a destination reached both ways, destinations on
// the host, a group without sources) and 300 random states; every older
// agent gets the full state's bytes; a 1.6 agent the derived form.
func TestDerivedLists(t *testing.T) {
	full := withLists(groupsState())
	if len(full.Peers) == 0 || len(full.VXLAN) == 0 {
		t.Fatalf("groupsState reaches %d peers, %d VXLAN hosts: the test guards nothing", len(full.Peers), len(full.VXLAN))
	}
	checkDerived(t, "groupsState", full)
	// A destination in two groups of one kind (the same class reached
	// from two sets of sources) is in its entry's list once.
	twice := groupsState()
	g := twice.RouteGroups[0]
	g.Sources = []netip.Addr{addr("100.64.0.8")}
	twice.RouteGroups = append(twice.RouteGroups, g)
	checkDerived(t, "a destination in two encrypted groups", withLists(twice))
	d := derivedOf(full)
	if err := hoststate.Validate(d, hoststate.Options{Host: "h1"}); err != nil {
		t.Fatalf("Validate of the derived groupsState: %v", err)
	}
	rnd := rand.New(rand.NewPCG(6, 1))
	n := 0
	for i := range 300 {
		st := randomGroups(rnd)
		st.Routes = []hoststate.Route{}
		full := withLists(st)
		n += len(full.Peers) + len(full.VXLAN)
		checkDerived(t, fmt.Sprint("random ", i), full)
	}
	if n == 0 {
		t.Fatal("no random state has a peer or VXLAN entry")
	}
	if !hoststate.ReadsDerived(hoststate.ReadSchema) {
		t.Errorf("this build reports schema %s but does not read derived states", hoststate.ReadSchema)
	}
	for _, s := range []string{"", "1.5", "1.4", "x", "1", "2.6", "0.7"} {
		if hoststate.ReadsDerived(s) {
			t.Errorf("ReadsDerived(%q)", s)
		}
	}
}

// TestCheckDerived: a derived state that cannot be derived is refused by
// Validate and by the data plane's CheckNetwork, naming the field: a list
// of its own left in an entry, a server reached with no entry, an entry
// no group gives anything to, routes outside the groups.
func TestCheckDerived(t *testing.T) {
	full := withLists(groupsState())
	cases := []struct {
		field string
		edit  func(*hoststate.State)
	}{
		{"peers[0].allowedIPs", func(s *hoststate.State) { s.Peers[0].AllowedIPs = full.Peers[0].AllowedIPs }},
		{"vxlan[0].guests", func(s *hoststate.State) { s.VXLAN[0].Guests = full.VXLAN[0].Guests }},
		{"routeGroups[", func(s *hoststate.State) { s.Peers = s.Peers[1:] }},
		{"routeGroups[", func(s *hoststate.State) { s.VXLAN = s.VXLAN[:len(s.VXLAN)-1] }},
		{"peers[", func(s *hoststate.State) {
			var key [32]byte
			key[0] = 99
			s.Peers = append(slices.Clone(s.Peers), hoststate.Peer{Server: "h99", PublicKey: base64.StdEncoding.EncodeToString(key[:]),
				Endpoint: netip.MustParseAddrPort("198.18.0.99:51820")})
		}},
		{"vxlan[", func(s *hoststate.State) {
			s.VXLAN = append(slices.Clone(s.VXLAN), hoststate.VXLANEntry{Server: "h99", Underlay: addr("198.18.0.99"), MAC: "02:c0:c6:12:00:63"})
		}},
		{"routes", func(s *hoststate.State) {
			s.Routes = []hoststate.Route{{Sources: []netip.Addr{addr("100.64.0.4")}, Dest: addr("100.64.0.9"), Server: "h2", Encrypt: true}}
		}},
	}
	checks := []struct {
		name string
		f    func(hoststate.State) error
	}{
		{"Validate", func(s hoststate.State) error { return hoststate.Validate(s, hoststate.Options{Host: "h1"}) }},
		{"CheckNetwork", hoststate.CheckNetwork},
		{"CheckedFilled", func(s hoststate.State) error { _, err := s.CheckedFilled(); return err }},
	}
	// The positive control: the derived state unedited passes every check,
	// so that what the cases below refuse is their edit.
	for _, check := range checks {
		if err := check.f(derivedOf(full)); err != nil {
			t.Fatalf("%s of the unedited derived state: %v", check.name, err)
		}
	}
	for _, c := range cases {
		d := derivedOf(full)
		c.edit(&d)
		for _, check := range checks {
			err := check.f(d)
			if !errors.Is(err, hoststate.ErrInvalid) || !strings.Contains(err.Error(), c.field) {
				t.Errorf("%s of a derived state, %s edited: %v, want ErrInvalid naming %s", check.name, c.field, err, c.field)
			}
		}
	}
	// What CheckedFilled fills is what Filled does, and the full state.
	d := derivedOf(full)
	got, err := d.CheckedFilled()
	if err != nil {
		t.Fatalf("CheckedFilled of a derivable state: %v", err)
	}
	if want := d.Filled(); !reflect.DeepEqual(got, want) || !reflect.DeepEqual(got.Peers, full.Peers) || !reflect.DeepEqual(got.VXLAN, full.VXLAN) || got.Derived {
		t.Fatalf("CheckedFilled:\n%+v\nwant Filled's, the full lists:\n%+v", got, want)
	}
}
