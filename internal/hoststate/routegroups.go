package hoststate

import (
	"iter"
	"net/netip"
)

// RouteGroup is the routes of one app from a set of local guests to every
// task of one destination class, in one encryption (schema 1.5): a route
// from Sources to each of Dests that runs on another server than this
// host. Dests are the class's tasks by address, its own guests included:
// one list shared by every host's group to that class (the compiler makes
// it once per class), which the host skips where it names itself. A
// state's groups of one app are consecutive, apps in the order of their
// networks; AllRoutes expands them into the routes of schema 1.3, in
// their order.
type RouteGroup struct {
	App     string       `json:"app"`
	Class   string       `json:"class"`   // the destination class
	Sources []netip.Addr `json:"sources"` // local guest addresses
	Dests   []RouteDest  `json:"dests"`   // the class's tasks, by address
	Encrypt bool         `json:"encrypt"` // corw0 when true, corv0 when false
}

// RouteDest is one task of a route group's destination class.
type RouteDest struct {
	Addr   netip.Addr `json:"addr"`
	Server string     `json:"server"` // where the task runs
}

// EachRoute is every route of st: the expansion of its route groups
// (per app, as the groups come, by destination address, plain before
// encrypted at one address; destinations on this host skipped), then
// Routes. For a state without groups it is Routes.
func (st *State) EachRoute() iter.Seq[Route] {
	return func(yield func(Route) bool) {
		st.eachRouteAt(func(r Route, _, _ int) bool { return yield(r) })
	}
}

// eachRouteAt is EachRoute with where each route comes from: group k's
// destination j, or (k < 0) Routes[j].
func (st *State) eachRouteAt(yield func(r Route, k, j int) bool) {
	if !st.eachGroupRoute(yield) {
		return
	}
	for j, r := range st.Routes {
		if !yield(r, -1, j) {
			return
		}
	}
}

// AllRoutes is EachRoute as a slice: st.Routes itself when st has no
// route groups.
func (st *State) AllRoutes() []Route {
	if len(st.RouteGroups) == 0 {
		return st.Routes
	}
	out := make([]Route, 0, st.NumRoutes())
	for r := range st.EachRoute() {
		out = append(out, r)
	}
	return out
}

// NumRoutes is the number of routes of st (of EachRoute).
func (st *State) NumRoutes() int {
	n := len(st.Routes)
	for i := range st.RouteGroups {
		g := &st.RouteGroups[i]
		if len(g.Sources) == 0 {
			continue
		}
		for j := range g.Dests {
			if g.Dests[j].Server != st.Host {
				n++
			}
		}
	}
	return n
}

// Expanded is st with its route groups expanded into Routes (AllRoutes),
// as a reader of schema 1.3 or 1.4 reads it; st itself when it has none.
// Its lists are st's (read-only) but Routes (and, for a derived state,
// its peers and VXLAN entries: Filled).
func (st *State) Expanded() State {
	if len(st.RouteGroups) == 0 {
		return *st
	}
	x := st.Filled()
	x.Routes, x.RouteGroups = st.AllRoutes(), nil
	return x
}

// eachGroupRoute yields the expansion of st's route groups; false when
// yield stopped it.
func (st *State) eachGroupRoute(yield func(r Route, k, j int) bool) bool {
	gs := st.RouteGroups
	var pos []int
	for lo := 0; lo < len(gs); {
		hi := lo + 1
		for hi < len(gs) && gs[hi].App == gs[lo].App {
			hi++
		}
		// Merge the app's groups by (destination, plain first); a group
		// without sources has no route.
		pos = append(pos[:0], make([]int, hi-lo)...)
		for {
			best := -1
			var bd netip.Addr
			for k := lo; k < hi; k++ {
				g := &gs[k]
				p := pos[k-lo]
				for p < len(g.Dests) && g.Dests[p].Server == st.Host {
					p++
				}
				pos[k-lo] = p
				if p == len(g.Dests) || len(g.Sources) == 0 {
					continue
				}
				d := g.Dests[p].Addr
				if best < 0 {
					best, bd = k, d
					continue
				}
				if c := d.Compare(bd); c < 0 || c == 0 && !g.Encrypt && gs[best].Encrypt {
					best, bd = k, d
				}
			}
			if best < 0 {
				break
			}
			g := &gs[best]
			j := pos[best-lo]
			d := &g.Dests[j]
			pos[best-lo]++
			if !yield(Route{Sources: g.Sources, Dest: d.Addr, Server: d.Server, Encrypt: g.Encrypt}, best, j) {
				return false
			}
		}
		lo = hi
	}
	return true
}

// EncodeFor is the encoding of st for an agent that reported it reads
// schema (api.Status.Schema; empty for an agent that reports none): a
// derived state (derived.go) as it is, in SchemaDerived, when the agent
// reads 1.6 or newer; else st with its route groups, in SchemaGroups,
// when the agent reads 1.5 or newer (a derived state's lists filled);
// else the bytes of today's states, byte for byte those of
// st.Filled().Expanded() (lists filled, routes written straight from the
// groups, in st's own schema). A state without groups encodes as it is
// for every agent (filled).
func (st *State) EncodeFor(schema string) ([]byte, error) {
	// One decision, WrittenAs's, so that the controller's comparison of
	// forms and the bytes written cannot disagree.
	switch st.WrittenAs(schema) {
	case SchemaDerived:
		x := *st
		x.Schema = SchemaDerived
		return x.appendJSON(make([]byte, 0, st.sizeHint()), false, true)
	case SchemaGroups:
		x := *st
		x.Schema = SchemaGroups
		return x.Encode()
	}
	if len(st.RouteGroups) == 0 {
		return st.Encode()
	}
	return st.appendJSON(make([]byte, 0, st.sizeHint()), true, false)
}

// WrittenAs is the form EncodeFor writes st in for an agent that reads
// schema: SchemaDerived, SchemaGroups, or "" for the lists and routes
// in full (in st's own schema). Two agents for which it is the same get
// the same bytes.
func (st *State) WrittenAs(schema string) string {
	switch {
	case st.Derived && ReadsDerived(schema):
		return SchemaDerived
	case len(st.RouteGroups) > 0 && ReadsGroups(schema):
		return SchemaGroups
	}
	return ""
}

// ReadsGroups reports whether an agent that reads schema (as it reported
// it) reads route groups. Fails closed: an empty or malformed schema, or
// one of another major version, does not.
func ReadsGroups(schema string) bool {
	ma, mi, err := ParseSchema(schema)
	return schema != "" && err == nil && ma == SchemaMajor && mi >= 5
}
