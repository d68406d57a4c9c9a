package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/store"
)

// The live what-if (POST /v1/plan): what an apply would change, compared
// with what the control plane holds now. Pure functions over the stored
// snapshot and the dry-run's plan, so that they are tested without a
// server.

// taskChanges lists the tasks an apply would add, move or remove, each
// with its reason (the compiler's placement reason for added and moved
// tasks; for removed ones, why they go).
func taskChanges(sn *store.Snapshot, p *compile.Plan, inApps map[string]bool) []api.PlanChange {
	was := map[string]string{}
	for _, pl := range sn.Placement {
		for _, t := range pl.Tasks {
			was[t.ID] = t.Server
		}
	}
	var out []api.PlanChange
	for t := range p.Tasks.All() {
		old, ok := was[t.ID]
		switch {
		case !ok:
			out = append(out, api.PlanChange{Kind: "task", Name: t.ID, Action: "add", Server: t.Server,
				Detail: "on " + t.Server + ": " + t.Reason.Chosen})
		case old != t.Server:
			out = append(out, api.PlanChange{Kind: "task", Name: t.ID, Action: "move", Server: t.Server, From: old,
				Detail: old + " -> " + t.Server + ": " + t.Reason.Chosen})
		}
		delete(was, t.ID)
	}
	for _, t := range p.Pending {
		delete(was, t.ID) // not removed: pending (pendingChanges)
	}
	gone := make([]string, 0, len(was))
	for id := range was {
		gone = append(gone, id)
	}
	sort.Strings(gone)
	for _, id := range gone {
		why := "its server is gone"
		if app, _, ok := strings.Cut(id, "/"); ok && inApps[app] {
			why = "the new spec asks for fewer tasks of its class, or no longer has the class"
		}
		out = append(out, api.PlanChange{Kind: "task", Name: id, Action: "remove", From: was[id],
			Detail: "from " + was[id] + ": " + why})
	}
	return out
}

// pathKey identifies one path between two tasks.
type pathKey struct{ app, from, to, proto string }

// pathChanges compares the stored paths with the plan's, per app and
// class pair: the paths added and removed (a path whose encryption,
// ports or servers change is removed and added again), sorted by app,
// source class, destination class.
func pathChanges(sn *store.Snapshot, p *compile.Plan) []api.PathChange {
	old := map[pathKey]compile.Path{}
	for _, pl := range sn.Placement {
		for pa := range pl.Paths.All() {
			old[pathKey{pa.App, pa.From, pa.To, pa.Protocol}] = pa
		}
	}
	type pairKey struct{ app, from, to string }
	pairs := map[pairKey]*api.PathChange{}
	pair := func(pa compile.Path) *api.PathChange {
		to := pa.ToClass
		if pa.ToApp != "" {
			to = pa.ToApp + "/" + pa.ToClass // a path into another app (app to app)
		}
		k := pairKey{pa.App, pa.FromClass, to}
		if pairs[k] == nil {
			pairs[k] = &api.PathChange{App: pa.App, FromClass: pa.FromClass, ToClass: to}
		}
		return pairs[k]
	}
	for pa := range p.Paths.All() {
		k := pathKey{pa.App, pa.From, pa.To, pa.Protocol}
		prev, ok := old[k]
		delete(old, k)
		if ok && samePath(prev, pa) {
			continue
		}
		c := pair(pa)
		c.Added = append(c.Added, pathRef(pa))
		if ok {
			c.Removed = append(c.Removed, pathRef(prev))
		}
	}
	for _, pa := range old {
		c := pair(pa)
		c.Removed = append(c.Removed, pathRef(pa))
	}
	out := make([]api.PathChange, 0, len(pairs))
	for _, c := range pairs {
		slices.SortFunc(c.Added, cmpRef)
		slices.SortFunc(c.Removed, cmpRef)
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b api.PathChange) int {
		return strings.Compare(a.App+"\x00"+a.FromClass+"\x00"+a.ToClass, b.App+"\x00"+b.FromClass+"\x00"+b.ToClass)
	})
	return out
}

func samePath(a, b compile.Path) bool {
	return a.Encrypt == b.Encrypt && a.Local == b.Local && a.FromServer == b.FromServer && a.ToServer == b.ToServer &&
		a.FromAddr == b.FromAddr && a.ToAddr == b.ToAddr && slices.Equal(a.Ports, b.Ports)
}

func pathRef(pa compile.Path) api.PathRef {
	kind := "plain"
	switch {
	case pa.Local:
		kind = "local"
	case pa.Encrypt:
		kind = "encrypted"
	}
	ports := make([]string, len(pa.Ports))
	for i, p := range pa.Ports {
		ports[i] = strconv.Itoa(p)
	}
	return api.PathRef{From: pa.From, To: pa.To, FromServer: pa.FromServer, ToServer: pa.ToServer,
		Kind: kind, Ports: pa.Protocol + "/" + strings.Join(ports, ",")}
}

func cmpRef(a, b api.PathRef) int {
	if c := strings.Compare(a.From, b.From); c != 0 {
		return c
	}
	if c := strings.Compare(a.To, b.To); c != 0 {
		return c
	}
	return strings.Compare(a.Ports, b.Ports)
}

// hostChanges lists the hosts whose desired state would change, each with
// what changes in it (guests, WireGuard peers, VXLAN entries, routes,
// firewall rules). stored is each host's stored desired state (raw JSON).
func hostChanges(p *compile.Plan, stored map[string][]byte) []api.PlanChange {
	var out []api.PlanChange
	for i := range p.Hosts {
		hs := &p.Hosts[i]
		// The stored bytes are today's (expanded) form for most agents,
		// the route groups of schema 1.5 or the derived state of 1.6 for
		// those that read them: the new state is encoded once, in the
		// form of the stored one's schema (a guess that only saves work:
		// bytes that differ are compared field by field below).
		raw := stored[hs.Host]
		b, err := hs.EncodeFor(storedSchema(raw))
		if err != nil {
			continue
		}
		if bytes.Equal(raw, b) {
			continue
		}
		var prev hoststate.State
		if raw != nil {
			if err := json.Unmarshal(raw, &prev); err != nil {
				prev = hoststate.State{}
			}
		}
		// Both with their lists filled: a derived state's (schema 1.6)
		// lists are its route groups'.
		detail := hostDiff(prev.Filled(), hs.Filled())
		if detail == "" {
			continue // the same state, encoded otherwise (an older schema's bytes)
		}
		out = append(out, api.PlanChange{Kind: "host", Name: hs.Host, Action: "update", Server: hs.Host, Detail: detail})
	}
	return out
}

// storedSchema is the schema a stored state says it is written in, read
// from its first field (every writer of a state puts "schema" first) with
// a JSON tokenizer that stops there; "" when it has none.
func storedSchema(raw []byte) string {
	d := json.NewDecoder(bytes.NewReader(raw))
	if t, err := d.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	if k, err := d.Token(); err != nil || k != "schema" {
		return ""
	}
	v, _ := d.Token()
	s, _ := v.(string)
	return s
}

// hostDiff says in one line what differs between two states of a host,
// "" when nothing a reader of the state would act on does.
func hostDiff(a, b hoststate.State) string {
	var parts []string
	add, rm := diffNames(a.Guests, b.Guests, func(g hoststate.Guest) string { return g.Task })
	parts = appendDiff(parts, "guests", add, rm)
	add, rm = diffNames(a.Peers, b.Peers, func(p hoststate.Peer) string { return p.Server })
	parts = appendDiff(parts, "WireGuard peers", add, rm)
	add, rm = diffNames(a.VXLAN, b.VXLAN, func(v hoststate.VXLANEntry) string { return v.Server })
	parts = appendDiff(parts, "VXLAN hosts", add, rm)
	if !jsonEqual(a.Peers, b.Peers) && !slices.ContainsFunc(parts, func(s string) bool { return strings.HasPrefix(s, "WireGuard") }) {
		parts = append(parts, "WireGuard allowed IPs or keys change")
	}
	if !jsonEqual(a.VXLAN, b.VXLAN) && !slices.ContainsFunc(parts, func(s string) bool { return strings.HasPrefix(s, "VXLAN") }) {
		parts = append(parts, "VXLAN entries change")
	}
	if ar, br := a.AllRoutes(), b.AllRoutes(); !jsonEqual(ar, br) {
		parts = append(parts, countChange("routes", len(ar), len(br)))
	}
	if !jsonEqual(a.Firewall, b.Firewall) {
		parts = append(parts, countChange("firewall rules", len(a.Firewall), len(b.Firewall)))
	}
	if !jsonEqual(a.Outbound, b.Outbound) {
		parts = append(parts, "outbound rules change")
	}
	if len(parts) == 0 && !jsonEqual(a, b) {
		parts = append(parts, "host settings change")
		if a.Host == "" {
			parts = []string{"first desired state"}
		}
	}
	return strings.Join(parts, "; ")
}

func diffNames[T any](a, b []T, name func(T) string) (added, removed []string) {
	have := map[string]bool{}
	for _, x := range a {
		have[name(x)] = true
	}
	for _, x := range b {
		n := name(x)
		if !have[n] {
			added = append(added, n)
		}
		delete(have, n)
	}
	for n := range have {
		removed = append(removed, n)
	}
	sort.Strings(added)
	sort.Strings(removed)
	return added, removed
}

func appendDiff(parts []string, what string, added, removed []string) []string {
	if len(added) > 0 {
		parts = append(parts, what+" +"+strings.Join(added, " +"))
	}
	if len(removed) > 0 {
		parts = append(parts, what+" -"+strings.Join(removed, " -"))
	}
	return parts
}

func jsonEqual(a, b any) bool {
	ab, err1 := json.Marshal(a)
	bb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ab, bb)
}

func countChange(what string, a, b int) string {
	if a == b {
		return what + " change"
	}
	return fmt.Sprintf("%s %d -> %d", what, a, b)
}
