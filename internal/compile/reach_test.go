package compile

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"

	"github.com/corridor-dev/corridor/internal/hoststate"
)

// TestSharedListsStayPut checks the lists that hosts share: every host's
// route groups to one class hold the class's one destination list (a
// positive control; TestRouteGroupsShared checks which), every such list
// is full (len == cap), and so is every list a derived host's lists are
// filled into, so that a reader that appends to one host's list gets a
// copy and cannot write into another host's; and neither the readers of
// host states (validation, encoders, expansion, filling) nor an append to
// one host's lists change any other host's: the plan stays byte for byte
// a fresh compile's.
func TestSharedListsStayPut(t *testing.T) {
	servers, apps, div := 60, 8, 10
	if raceDetector {
		servers, apps, div = 24, 4, 20
	}
	in := sizedFleet(servers, apps, div)
	for i := range in.Servers { // keys that validate
		in.Servers[i].PublicKey = wgKey(byte(i))
	}
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	dests := map[*RouteDest]string{}
	shared, derived := 0, 0
	for i := range p.Hosts {
		h := &p.Hosts[i]
		for _, g := range h.RouteGroups {
			if len(g.Dests) != cap(g.Dests) {
				t.Fatalf("host %s: the group to %s/%s has room to grow (%d of %d)", h.Host, g.App, g.Class, len(g.Dests), cap(g.Dests))
			}
			if o, ok := dests[&g.Dests[0]]; ok && o != h.Host {
				shared++
			}
			dests[&g.Dests[0]] = h.Host
		}
		if !h.Derived {
			continue
		}
		derived++
		f := h.Filled()
		for _, pe := range f.Peers {
			if len(pe.AllowedIPs) != cap(pe.AllowedIPs) {
				t.Fatalf("host %s: peer %s's allowed IPs, filled, have room to grow (%d of %d)", h.Host, pe.Server, len(pe.AllowedIPs), cap(pe.AllowedIPs))
			}
		}
		for _, v := range f.VXLAN {
			if len(v.Guests) != cap(v.Guests) {
				t.Fatalf("host %s: VXLAN entry %s's guests, filled, have room to grow (%d of %d)", h.Host, v.Server, len(v.Guests), cap(v.Guests))
			}
		}
	}
	if shared == 0 || derived == 0 {
		t.Fatalf("%d destination lists shared between hosts, %d derived hosts: the test guards nothing", shared, derived)
	}
	// The readers of host states, on every host.
	for i := range p.Hosts {
		h := &p.Hosts[i]
		if err := hoststate.Validate(*h, hoststate.Options{Host: h.Host}); err != nil {
			t.Fatalf("host %s: %v", h.Host, err)
		}
		for _, schema := range []string{"", "1.3", "1.5", hoststate.SchemaDerived} {
			if _, err := h.EncodeFor(schema); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := h.Encode(); err != nil {
			t.Fatal(err)
		}
		if _, err := h.CheckedFilled(); err != nil {
			t.Fatal(err)
		}
		_ = h.Expanded()
		_ = h.AllRoutes()
	}
	// A reader that appends to one host's destination lists, as an
	// ingress or a link does (they copy first, but a careless one might
	// not): the lists are shared by many hosts, so only their being full
	// (checked above) keeps the others' from changing. (Filled lists are
	// made anew for each call: appending to them reaches no plan.)
	h := &p.Hosts[1]
	extraA := netip.MustParseAddr("100.127.255.254")
	for _, g := range h.RouteGroups {
		_ = append(g.Dests, RouteDest{Addr: extraA, Server: "elsewhere"})
	}
	fresh, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := mustJSON(t, p), mustJSON(t, fresh); !bytes.Equal(g, w) {
		t.Fatalf("the plan changed under its readers: %s", firstDiff(g, w))
	}
}

// TestMetaDiff checks the servers whose meta changed since an earlier
// compile (reachDiffs.metaDiff), whose entries a patched host makes
// again: all of them against a meta of another length.
func TestMetaDiff(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	var d reachDiffs
	m0 := []serverMeta{{addr: a("198.18.0.1"), wgPort: 51820, key: "k0"}, {addr: a("198.18.0.2"), wgPort: 51820, key: "k1"}, {addr: a("198.18.0.3"), wgPort: 51820, key: "k2"}}
	m1 := slices.Clone(m0)
	m1[1].next = "k1-next"
	m1[2].wgPort = 51821
	if got, want := d.metaDiff(m0, m1), []int32{1, 2}; !slices.Equal(got, want) {
		t.Errorf("metaDiff = %v, want %v", got, want)
	}
	if got := d.metaDiff(m1, m1); len(got) != 0 {
		t.Errorf("metaDiff of the same meta = %v, want none", got)
	}
	if got, want := d.metaDiff(m0[:2], m1), []int32{0, 1, 2}; !slices.Equal(got, want) {
		t.Errorf("metaDiff against a shorter list = %v, want %v", got, want)
	}
}

// TestReachSetDiff checks the servers a patched derived host (schema 1.6)
// makes again (reachDiffs.setDiff): those reached by one reach only, or
// by both but another way (encrypted, in plain), not those whose guests
// differ only; memoised per pair; and what reaches says of a server.
func TestReachSetDiff(t *testing.T) {
	mk := func(by map[int32][2]int32) *reach {
		r := &reach{}
		for s := range int32(10) {
			if c, ok := by[s]; ok {
				r.remotes = append(r.remotes, remoteCount{server: s, nEnc: c[0], nPlain: c[1]})
			}
		}
		return r
	}
	old := mk(map[int32][2]int32{1: {1, 0}, 2: {0, 1}, 3: {1, 1}, 4: {2, 0}, 6: {0, 3}, 7: {1, 0}})
	new := mk(map[int32][2]int32{
		1: {1, 0}, // same
		2: {0, 2}, // a guest more, still in plain only
		3: {1, 0}, // no longer in plain
		5: {1, 0}, // new server
		6: {0, 1}, // a guest less
		7: {1, 1}, // now in plain too
	}) // 4 is gone
	var d reachDiffs
	got := d.setDiff(old, new)
	if want := []int32{3, 4, 5, 7}; !slices.Equal(got, want) {
		t.Errorf("setDiff(old, new) = %v, want %v", got, want)
	}
	if again := d.setDiff(old, new); &again[0] != &got[0] {
		t.Error("the same pair of reaches is compared again")
	}
	if got := d.setDiff(new, new); len(got) != 0 {
		t.Errorf("setDiff(new, new) = %v, want none", got)
	}
	if got, want := d.setDiff(old, nil), []int32{1, 2, 3, 4, 6, 7}; !slices.Equal(got, want) {
		t.Errorf("setDiff(old, nil) = %v, want %v", got, want)
	}
	if got, want := d.setDiff(nil, new), []int32{1, 2, 3, 5, 6, 7}; !slices.Equal(got, want) {
		t.Errorf("setDiff(nil, new) = %v, want %v", got, want)
	}
	for _, c := range []struct {
		s          int32
		enc, plain bool
	}{{1, true, false}, {2, false, true}, {7, true, true}, {4, false, false}, {9, false, false}} {
		if e, p := new.reaches(c.s); e != c.enc || p != c.plain {
			t.Errorf("reaches(%d) = %v, %v; want %v, %v", c.s, e, p, c.enc, c.plain)
		}
	}
}
