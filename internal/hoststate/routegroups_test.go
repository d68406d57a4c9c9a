package hoststate_test

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/hoststate"
)

// bruteExpand is the expansion of st's route groups written the slow way:
// every (source set, destination) of every group but those on st.Host,
// sorted per app (apps in the order their groups come) by destination,
// plain first, then st.Routes.
func bruteExpand(st hoststate.State) []hoststate.Route {
	var apps []string
	type kr struct {
		app int
		r   hoststate.Route
	}
	var all []kr
	for _, g := range st.RouteGroups {
		if len(apps) == 0 || apps[len(apps)-1] != g.App {
			apps = append(apps, g.App)
		}
		if len(g.Sources) == 0 {
			continue
		}
		for _, d := range g.Dests {
			if d.Server != st.Host {
				all = append(all, kr{len(apps) - 1, hoststate.Route{Sources: g.Sources, Dest: d.Addr, Server: d.Server, Encrypt: g.Encrypt}})
			}
		}
	}
	slices.SortStableFunc(all, func(x, y kr) int {
		b := func(e bool) int {
			if e {
				return 1
			}
			return 0
		}
		return cmp.Or(cmp.Compare(x.app, y.app), x.r.Dest.Compare(y.r.Dest), cmp.Compare(b(x.r.Encrypt), b(y.r.Encrypt)))
	})
	var out []hoststate.Route
	for _, x := range all {
		out = append(out, x.r)
	}
	return append(out, st.Routes...)
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// groupsState is a state of schema 1.3 whose routes are groups: two apps,
// classes whose addresses interleave, one destination reached plain from
// one class and encrypted from another, destinations on the host itself,
// a group without sources.
func groupsState() hoststate.State {
	st := hoststate.Empty("h1")
	st.Address, st.VTEPMAC = addr("198.18.0.1"), "02:c0:00:00:00:01"
	st.Routes = []hoststate.Route{}
	web := []hoststate.RouteDest{{addr("100.64.0.2"), "h2"}, {addr("100.64.0.5"), "h1"}, {addr("100.64.0.7"), "h3"}}
	db := []hoststate.RouteDest{{addr("100.64.0.3"), "h3"}, {addr("100.64.0.4"), "h1"}, {addr("100.64.0.6"), "h2"}}
	srcA, srcB := []netip.Addr{addr("100.64.0.4")}, []netip.Addr{addr("100.64.0.5")}
	st.RouteGroups = []hoststate.RouteGroup{
		{App: "a", Class: "db", Sources: srcB, Dests: db, Encrypt: true},
		{App: "a", Class: "web", Sources: srcA, Dests: web, Encrypt: false},
		{App: "a", Class: "db", Sources: srcA, Dests: db, Encrypt: false},
		{App: "a", Class: "web", Sources: srcB, Dests: web, Encrypt: true},
		{App: "a", Class: "none", Sources: nil, Dests: db, Encrypt: false},
		{App: "b", Class: "x", Sources: []netip.Addr{addr("100.65.0.1")}, Dests: []hoststate.RouteDest{{addr("100.65.0.2"), "h9"}}, Encrypt: true},
	}
	return st
}

// TestRouteGroupsExpand: a state's expansion is the routes of its groups
// in today's order (per app, by destination, plain first, the host's own
// guests skipped), for a hand-made state and 300 random ones.
func TestRouteGroupsExpand(t *testing.T) {
	st := groupsState()
	want := []string{
		"100.64.0.2 h2 false [100.64.0.4]", "100.64.0.2 h2 true [100.64.0.5]",
		"100.64.0.3 h3 false [100.64.0.4]", "100.64.0.3 h3 true [100.64.0.5]",
		"100.64.0.6 h2 false [100.64.0.4]", "100.64.0.6 h2 true [100.64.0.5]",
		"100.64.0.7 h3 false [100.64.0.4]", "100.64.0.7 h3 true [100.64.0.5]",
		"100.65.0.2 h9 true [100.65.0.1]",
	}
	var got []string
	for _, r := range st.AllRoutes() {
		got = append(got, fmt.Sprint(r.Dest, " ", r.Server, " ", r.Encrypt, " ", r.Sources))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("expansion:\n got %q\nwant %q", got, want)
	}
	if n := st.NumRoutes(); n != len(want) {
		t.Errorf("NumRoutes = %d, want %d", n, len(want))
	}
	if err := hoststate.Validate(st, hoststate.Options{Host: "h1"}); err != nil {
		t.Errorf("Validate: %v", err)
	}

	rnd := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		st := randomGroups(rnd)
		if got, want := st.AllRoutes(), bruteExpand(st); !routesEqual(got, want) {
			t.Fatalf("random state %+v:\n got %v\nwant %v", st.RouteGroups, got, want)
		}
		if st.NumRoutes() != len(bruteExpand(st)) {
			t.Fatalf("NumRoutes %d, want %d", st.NumRoutes(), len(bruteExpand(st)))
		}
	}
}

func routesEqual(a, b []hoststate.Route) bool {
	return slices.EqualFunc(a, b, func(x, y hoststate.Route) bool {
		return x.Dest == y.Dest && x.Server == y.Server && x.Encrypt == y.Encrypt && slices.Equal(x.Sources, y.Sources)
	})
}

// randomGroups is a state with random route groups: up to 3 apps, each
// with up to 4 classes of up to 6 tasks on 4 servers (h0 is the host),
// addresses drawn at random in the app's network.
func randomGroups(rnd *rand.Rand) hoststate.State {
	st := hoststate.Empty("h0")
	for a := range rnd.IntN(4) {
		perm := rnd.Perm(200)
		next := 0
		for c := range rnd.IntN(5) {
			var dests []hoststate.RouteDest
			for range rnd.IntN(7) {
				dests = append(dests, hoststate.RouteDest{Addr: netip.AddrFrom4([4]byte{100, 64 + byte(a), 0, byte(1 + perm[next])}), Server: fmt.Sprint("h", rnd.IntN(4))})
				next++
			}
			slices.SortFunc(dests, func(x, y hoststate.RouteDest) int { return x.Addr.Compare(y.Addr) })
			for _, enc := range []bool{false, true} {
				if rnd.IntN(3) == 0 {
					continue
				}
				var src []netip.Addr
				for range rnd.IntN(3) {
					src = append(src, netip.AddrFrom4([4]byte{100, 64 + byte(a), 1, byte(rnd.IntN(250))}))
				}
				st.RouteGroups = append(st.RouteGroups, hoststate.RouteGroup{App: fmt.Sprint("app", a), Class: fmt.Sprint("c", c), Sources: src, Dests: dests, Encrypt: enc})
			}
		}
	}
	rnd.Shuffle(len(st.RouteGroups), func(i, j int) {
		// Shuffle within an app only: an app's groups stay consecutive.
		if st.RouteGroups[i].App == st.RouteGroups[j].App {
			st.RouteGroups[i], st.RouteGroups[j] = st.RouteGroups[j], st.RouteGroups[i]
		}
	})
	if rnd.IntN(2) == 0 {
		st.Routes = []hoststate.Route{{Sources: []netip.Addr{addr("100.70.0.1")}, Dest: addr("100.70.0.2"), Server: "h3"}}
	}
	return st
}

// TestEncodeFor: an agent that does not read schema 1.5 (none reported,
// 1.3, 1.4, a malformed or another major one) gets today's bytes, those
// of the expanded state; one that reads it gets the groups in schema 1.5,
// which decode to the same routes. A state without groups is the same
// bytes for every agent.
func TestEncodeFor(t *testing.T) {
	st := groupsState()
	x := st.Expanded()
	if len(x.RouteGroups) != 0 || !routesEqual(x.Routes, bruteExpand(st)) {
		t.Fatalf("Expanded: groups %v, routes %v", x.RouteGroups, x.Routes)
	}
	old, err := json.Marshal(x)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(old, []byte(`"schema":"1.3"`)) || bytes.Contains(old, []byte("routeGroups")) {
		t.Fatalf("expanded state: %s", old)
	}
	for _, schema := range []string{"", "1.0", "1.3", "1.4", "x", "2.5", "0.9"} {
		b, err := st.EncodeFor(schema)
		if err != nil || !bytes.Equal(b, old) {
			t.Errorf("EncodeFor(%q):\n got %s (%v)\nwant %s", schema, b, err, old)
		}
		if hoststate.ReadsGroups(schema) {
			t.Errorf("ReadsGroups(%q)", schema)
		}
	}
	for _, schema := range []string{"1.5", "1.6", "1.12"} {
		if !hoststate.ReadsGroups(schema) {
			t.Errorf("!ReadsGroups(%q)", schema)
		}
		b, err := st.EncodeFor(schema)
		if err != nil {
			t.Fatal(err)
		}
		y := st
		y.Schema = hoststate.SchemaGroups
		want, _ := json.Marshal(y)
		if !bytes.Equal(b, want) {
			t.Errorf("EncodeFor(%q):\n got %s\nwant %s", schema, b, want)
		}
		var back hoststate.State
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if back.Schema != "1.5" || len(back.RouteGroups) != len(st.RouteGroups) || !routesEqual(back.AllRoutes(), x.Routes) {
			t.Errorf("decoded 1.5 state: schema %s, %d groups, routes %v", back.Schema, len(back.RouteGroups), back.AllRoutes())
		}
		if err := hoststate.Validate(back, hoststate.Options{Host: "h1"}); err != nil {
			t.Errorf("Validate of the decoded 1.5 state: %v", err)
		}
	}
	// The old bytes decode to the routes alone, as a 1.3 agent reads them.
	var back hoststate.State
	if err := json.Unmarshal(old, &back); err != nil || len(back.RouteGroups) != 0 || !routesEqual(back.AllRoutes(), x.Routes) {
		t.Errorf("decoded old state: %v, %v", err, back)
	}
	// Encode of a state with groups is json.Marshal's.
	sameAsMarshal(t, "groups", st)
	y := st
	y.RouteGroups[1].Dests = nil
	y.RouteGroups[0].Sources = nil
	sameAsMarshal(t, "groups with nil lists", y)
	plain := valid()
	for _, schema := range []string{"", "1.5"} {
		b, _ := plain.EncodeFor(schema)
		want, _ := json.Marshal(plain)
		if !bytes.Equal(b, want) {
			t.Errorf("state without groups, EncodeFor(%q) = %s, want %s", schema, b, want)
		}
	}
}

// TestValidateRouteGroups: the checks the expansion relies on, and the
// route checks seen through the expansion, name the group.
func TestValidateRouteGroups(t *testing.T) {
	for _, tc := range []struct {
		name, field string
		edit        func(*hoststate.State)
	}{
		{"no app", "routeGroups[0].app", func(st *hoststate.State) { st.RouteGroups[0].App = "" }},
		{"no class", "routeGroups[2].class", func(st *hoststate.State) { st.RouteGroups[2].Class = "" }},
		{"apart", "routeGroups[6].app", func(st *hoststate.State) {
			st.RouteGroups = append(st.RouteGroups, st.RouteGroups[0])
		}},
		{"unsorted", "routeGroups[5].dests[1].addr", func(st *hoststate.State) {
			st.RouteGroups[5].Dests = []hoststate.RouteDest{{addr("100.65.0.3"), "h9"}, {addr("100.65.0.2"), "h9"}}
		}},
		{"twice", "routeGroups[5].dests[1].addr", func(st *hoststate.State) {
			st.RouteGroups[5].Dests = []hoststate.RouteDest{{addr("100.65.0.3"), "h9"}, {addr("100.65.0.3"), "h9"}}
		}},
		{"no server", "routeGroups[5].dests[0].server", func(st *hoststate.State) { st.RouteGroups[5].Dests = []hoststate.RouteDest{{Addr: addr("100.65.0.3")}} }},
		{"bad dest", "routeGroups[5].dests[0].addr", func(st *hoststate.State) {
			st.RouteGroups[5].Dests = []hoststate.RouteDest{{addr("::1"), "h9"}}
		}},
		{"bad source", "routeGroups[5].sources[0]", func(st *hoststate.State) { st.RouteGroups[5].Sources = []netip.Addr{{}} }},
		{"both", "routeGroups[3].dests[0].sources[0]", func(st *hoststate.State) {
			// Source 100.64.0.4 to web's 100.64.0.2, plain in group 1 and
			// now encrypted too.
			st.RouteGroups[3].Sources = []netip.Addr{addr("100.64.0.4")}
		}},
	} {
		st := groupsState()
		st.RouteGroups = slices.Clone(st.RouteGroups)
		tc.edit(&st)
		err := hoststate.Validate(st, hoststate.Options{Host: "h1"})
		if !errors.Is(err, hoststate.ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: got %v, want an ErrInvalid naming %s", tc.name, err, tc.field)
		}
	}
	// A server address routed by a group is refused.
	st := groupsState()
	if err := hoststate.Validate(st, hoststate.Options{Host: "h1", ServerAddrs: []netip.Addr{addr("100.64.0.7")}}); err == nil || !strings.Contains(err.Error(), "routeGroups[1].dests[2]") {
		t.Errorf("server address in a group: %v", err)
	}
}
