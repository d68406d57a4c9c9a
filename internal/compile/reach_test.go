package compile

import (
	"bytes"
	"encoding/base64"
	"net/netip"
	"slices"
	"testing"

	"github.com/corridor-dev/corridor/internal/hoststate"
)

// TestRemoteListsShared checks the remote lists that hosts share
// (reach.go): hosts of one app with the same classes reached hold the
// very same allowed IPs and VXLAN guests of a server (a positive control),
// every such list is full (len == cap), so that a reader that appends to
// one host's list gets a copy and cannot write into another host's, and
// neither the readers of host states (validation, encoders, expansion) nor
// an append to one host's lists change any other host's: the plan stays
// byte for byte a fresh compile's.
func TestRemoteListsShared(t *testing.T) {
	servers, apps, div := 60, 8, 10
	if raceDetector {
		servers, apps, div = 24, 4, 20
	}
	in := sizedFleet(servers, apps, div)
	for i := range in.Servers { // keys that validate
		var k [32]byte
		k[0], k[1] = byte(i), byte(i>>8)
		in.Servers[i].PublicKey = base64.StdEncoding.EncodeToString(k[:])
	}
	// The lists made in full (deriveLists off: the reference of
	// TestDerivedListsSameAsFull); derived states share none.
	var p *Plan
	var err error
	withFullLists(func() { p, err = Compile(in) })
	if err != nil {
		t.Fatal(err)
	}
	enc := map[*netip.Prefix]string{}
	plain := map[*netip.Addr]string{}
	sharedEnc, sharedPlain := 0, 0
	for _, h := range p.Hosts {
		for _, pe := range h.Peers {
			if len(pe.AllowedIPs) != cap(pe.AllowedIPs) {
				t.Fatalf("host %s: peer %s's allowed IPs have room to grow (%d of %d)", h.Host, pe.Server, len(pe.AllowedIPs), cap(pe.AllowedIPs))
			}
			if o, ok := enc[&pe.AllowedIPs[0]]; ok && o != h.Host {
				sharedEnc++
			}
			enc[&pe.AllowedIPs[0]] = h.Host
		}
		for _, v := range h.VXLAN {
			if len(v.Guests) != cap(v.Guests) {
				t.Fatalf("host %s: VXLAN entry %s's guests have room to grow (%d of %d)", h.Host, v.Server, len(v.Guests), cap(v.Guests))
			}
			if o, ok := plain[&v.Guests[0]]; ok && o != h.Host {
				sharedPlain++
			}
			plain[&v.Guests[0]] = h.Host
		}
	}
	if sharedEnc == 0 || sharedPlain == 0 {
		t.Fatalf("no list shared between hosts (%d allowed IPs, %d VXLAN guests): the test guards nothing", sharedEnc, sharedPlain)
	}
	// The readers of host states, on every host.
	for i := range p.Hosts {
		h := &p.Hosts[i]
		if err := hoststate.Validate(*h, hoststate.Options{Host: h.Host}); err != nil {
			t.Fatalf("host %s: %v", h.Host, err)
		}
		for _, schema := range []string{"", "1.3", "1.5"} {
			if _, err := h.EncodeFor(schema); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := h.Encode(); err != nil {
			t.Fatal(err)
		}
		_ = h.Expanded()
		_ = h.AllRoutes()
	}
	// A reader that appends to one host's lists, as an ingress or a link
	// does (they copy first, but a careless one might not).
	h := &p.Hosts[1]
	extraP := netip.MustParsePrefix("100.127.255.254/32")
	extraA := extraP.Addr()
	for j := range h.Peers {
		_ = append(h.Peers[j].AllowedIPs, extraP)
	}
	for j := range h.VXLAN {
		_ = append(h.VXLAN[j].Guests, extraA)
	}
	var fresh *Plan
	withFullLists(func() { fresh, err = Compile(in) })
	if err != nil {
		t.Fatal(err)
	}
	if g, w := mustJSON(t, p), mustJSON(t, fresh); !bytes.Equal(g, w) {
		t.Fatalf("the plan changed under its readers: %s", firstDiff(g, w))
	}
}

// TestReachDiff checks the servers a patched host makes again
// (reachDiffs): those whose lists differ between an app's old and new
// reach, in either list, or that only one of them has; none for equal
// lists; every server of a reach against none; and the servers whose
// meta changed, all of them against a meta of another length.
func TestReachDiff(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	p := func(s string) netip.Prefix { return netip.PrefixFrom(a(s), 32) }
	// mk makes a reach from per-server lists (server: enc, plain).
	type lists struct {
		enc   []netip.Prefix
		plain []netip.Addr
	}
	mk := func(by map[int32]lists) *reach {
		r := &reach{}
		for s := range int32(10) {
			l, ok := by[s]
			if !ok {
				continue
			}
			r.remotes = append(r.remotes, remoteCount{server: s, nEnc: int32(len(l.enc)), nPlain: int32(len(l.plain)),
				oEnc: int32(len(r.enc)), oPlain: int32(len(r.plain))})
			r.enc = append(r.enc, l.enc...)
			r.plain = append(r.plain, l.plain...)
		}
		return r
	}
	old := mk(map[int32]lists{
		1: {enc: []netip.Prefix{p("100.64.0.1")}},
		2: {plain: []netip.Addr{a("100.64.0.2")}},
		3: {enc: []netip.Prefix{p("100.64.0.3")}, plain: []netip.Addr{a("100.64.0.4")}},
		4: {enc: []netip.Prefix{p("100.64.0.5")}},
		6: {plain: []netip.Addr{a("100.64.0.9")}},
	})
	new := mk(map[int32]lists{
		1: {enc: []netip.Prefix{p("100.64.0.1")}},                                       // same
		2: {plain: []netip.Addr{a("100.64.0.2"), a("100.64.0.7")}},                      // a guest more
		3: {enc: []netip.Prefix{p("100.64.0.3")}, plain: []netip.Addr{a("100.64.0.8")}}, // another plain guest
		5: {enc: []netip.Prefix{p("100.64.0.6")}},                                       // new server
		6: {plain: []netip.Addr{a("100.64.0.9")}},                                       // same
	}) // 4 is gone
	var d reachDiffs
	got := d.diff(old, new)
	if want := []int32{2, 3, 4, 5}; !slices.Equal(got, want) {
		t.Errorf("diff(old, new) = %v, want %v", got, want)
	}
	if again := d.diff(old, new); &again[0] != &got[0] {
		t.Error("the same pair of reaches is compared again")
	}
	if got := d.diff(new, new); len(got) != 0 {
		t.Errorf("diff(new, new) = %v, want none", got)
	}
	if got, want := d.diff(old, nil), []int32{1, 2, 3, 4, 6}; !slices.Equal(got, want) {
		t.Errorf("diff(old, nil) = %v, want %v", got, want)
	}
	if got, want := d.diff(nil, new), []int32{1, 2, 3, 5, 6}; !slices.Equal(got, want) {
		t.Errorf("diff(nil, new) = %v, want %v", got, want)
	}
	if l, _ := new.lists(2); len(l) != 0 {
		t.Errorf("lists(2) gives allowed IPs %v for a server reached in plain only", l)
	}
	if e, pl := new.lists(3); !slices.Equal(e, []netip.Prefix{p("100.64.0.3")}) || !slices.Equal(pl, []netip.Addr{a("100.64.0.8")}) || cap(pl) != len(pl) {
		t.Errorf("lists(3) = %v, %v (cap %d)", e, pl, cap(pl))
	}

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
