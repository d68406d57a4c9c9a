package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

const groupsApp = `apiVersion: corridor/v1
kind: App
name: rg
classes:
  - name: a
    tasks: 2
    guest: {runtime: netns, command: [sleep, infinity]}
    resources: {cpu: 10m, memory: 4Mi}
  - name: b
    tasks: 2
    guest: {runtime: netns, command: [sleep, infinity]}
    resources: {cpu: 10m, memory: 4Mi}
  - name: c
    tasks: 2
    guest: {runtime: netns, command: [sleep, infinity]}
    resources: {cpu: 10m, memory: 4Mi}
rules:
  - {from: a, to: b, ports: [80], encrypt: true}
  - {from: c, to: a, ports: [81], encrypt: false}
`

// TestDesiredStateForAgentSchema: the controller writes a host's routes
// as groups (schema 1.5) only once its agent reported it reads 1.5, and
// today's bytes (schema 1.3, routes expanded: what json.Marshal writes
// for the state an older agent decodes) to every other host; an agent
// that reports 1.5 gets its state written again in groups, with the same
// routes, and one that reports an older schema again (a downgrade) gets
// the old bytes back.
func TestDesiredStateForAgentSchema(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	a1 := ts.join(t, "s1", 0, nil)
	ts.join(t, "s2", 1, nil)
	if _, err := ts.admin.ApplyApp(bg, []byte(groupsApp)); err != nil {
		t.Fatal(err)
	}
	decode := func(b []byte) hoststate.State {
		t.Helper()
		var st hoststate.State
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatalf("%v: %s", err, b)
		}
		return st
	}
	// Old form: schema 1.3, routes, no groups, json.Marshal's bytes.
	oldForm := func(host string) (bool, string) {
		b, _ := ts.storedDesired(t, host)
		if b == nil {
			return false, "no state"
		}
		st := decode(b)
		again, _ := json.Marshal(st)
		return st.Schema == hoststate.Schema && len(st.Routes) > 0 && len(st.RouteGroups) == 0 &&
			!bytes.Contains(b, []byte("routeGroups")) && bytes.Equal(again, b), string(b)
	}
	eventually(t, 20*time.Second, "both hosts have today's states, with routes", func() (bool, string) {
		ok1, b1 := oldForm("s1")
		ok2, b2 := oldForm("s2")
		return ok1 && ok2, b1 + "\n" + b2
	})
	old1, _ := ts.storedDesired(t, "s1")
	old2, rev2 := ts.storedDesired(t, "s2")
	routes1 := decode(old1).Routes

	report := func(schema string) {
		t.Helper()
		if err := a1.c.ReportStatus(bg, "s1", api.Status{Name: "s1", Schema: schema, Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	report(hoststate.SchemaGroups)
	var groups []byte
	eventually(t, 20*time.Second, "s1's state written in groups", func() (bool, string) {
		b, _ := ts.storedDesired(t, "s1")
		groups = b
		return bytes.Contains(b, []byte(`"schema":"1.5"`)) && bytes.Contains(b, []byte(`"routeGroups":[`)), string(b)
	})
	st := decode(groups)
	if again, _ := json.Marshal(st); !bytes.Equal(again, groups) {
		t.Errorf("the 1.5 state is not json.Marshal's bytes:\n%s\n%s", groups, again)
	}
	if len(st.Routes) != 0 || len(st.RouteGroups) == 0 {
		t.Errorf("the 1.5 state holds %d routes and %d groups", len(st.Routes), len(st.RouteGroups))
	}
	if got, want := mustJSON(st.AllRoutes()), mustJSON(routes1); !bytes.Equal(got, want) {
		t.Errorf("the 1.5 state's routes differ from the old state's:\n got %s\nwant %s", got, want)
	}
	if x := st.Expanded(); !bytes.Equal(mustJSON(x.Routes), mustJSON(routes1)) {
		t.Errorf("expansion differs")
	}
	if err := hoststate.Validate(st, hoststate.Options{Host: "s1"}); err != nil {
		t.Errorf("the 1.5 state is invalid: %v", err)
	}
	if b, rev := ts.storedDesired(t, "s2"); !bytes.Equal(b, old2) || rev != rev2 {
		t.Errorf("s2's agent reported no schema, but its state changed:\n%s", b)
	}

	// An agent of 1.6: the derived state, peers and VXLAN entries
	// without their lists, which its groups give as the old state had
	// them.
	report(hoststate.ReadSchema)
	var derived []byte
	eventually(t, 20*time.Second, "s1's state written derived", func() (bool, string) {
		b, _ := ts.storedDesired(t, "s1")
		derived = b
		return bytes.Contains(b, []byte(`"schema":"1.6"`)) && bytes.Contains(b, []byte(`"derived":true`)), string(b)
	})
	dst := decode(derived)
	if !dst.Derived || len(dst.Peers) == 0 || len(dst.Peers[0].AllowedIPs) != 0 {
		t.Fatalf("the 1.6 state: %s", derived)
	}
	oldSt := decode(old1)
	filled := dst.Filled()
	if got, want := mustJSON(filled.Peers), mustJSON(oldSt.Peers); !bytes.Equal(got, want) {
		t.Errorf("the 1.6 state's peers, filled:\n got %s\nwant %s", got, want)
	}
	if got, want := mustJSON(filled.VXLAN), mustJSON(oldSt.VXLAN); !bytes.Equal(got, want) {
		t.Errorf("the 1.6 state's VXLAN entries, filled:\n got %s\nwant %s", got, want)
	}
	if err := hoststate.Validate(dst, hoststate.Options{Host: "s1"}); err != nil {
		t.Errorf("the 1.6 state is invalid: %v", err)
	}
	if b, rev := ts.storedDesired(t, "s2"); !bytes.Equal(b, old2) || rev != rev2 {
		t.Errorf("s2's agent reported no schema, but its state changed:\n%s", b)
	}

	// An older agent again: the old bytes come back.
	report("1.3")
	eventually(t, 20*time.Second, "s1's state back in today's form", func() (bool, string) {
		b, _ := ts.storedDesired(t, "s1")
		return bytes.Equal(b, old1), fmt.Sprintf("%s\nwant\n%s", b, old1)
	})
}

// TestPlanDiffReadsRouteGroups: the plan's host changes find no change in
// a host whose stored state is the plan's state in either encoding
// (groups for a 1.5 agent, expanded routes for an older one), and name
// the routes when a stored state's routes differ.
func TestPlanDiffReadsRouteGroups(t *testing.T) {
	apps, err := spec.DecodeApps("apps.yaml", []byte(groupsApp))
	if err != nil {
		t.Fatal(err)
	}
	servers := []spec.Server{
		{Name: "s1", Address: "198.18.0.1", Capacity: spec.Resources{CPU: 1000, Memory: 1 << 30}},
		{Name: "s2", Address: "198.18.0.2", Capacity: spec.Resources{CPU: 1000, Memory: 1 << 30}},
	}
	p, err := compile.Compile(compile.Input{Apps: apps, Servers: servers})
	if err != nil {
		t.Fatal(err)
	}
	groups := 0
	for _, schema := range []string{"", hoststate.SchemaGroups, hoststate.SchemaDerived} {
		stored := map[string][]byte{}
		for i := range p.Hosts {
			groups += len(p.Hosts[i].RouteGroups)
			b, err := p.Hosts[i].EncodeFor(schema)
			if err != nil {
				t.Fatal(err)
			}
			stored[p.Hosts[i].Host] = b
		}
		if ch := hostChanges(p, stored); len(ch) != 0 {
			t.Errorf("stored for agents of schema %q: changes %+v", schema, ch)
		}
	}
	if groups == 0 {
		t.Fatal("no route group in the plan")
	}
	// A stored state with one route less: the routes change.
	h := p.Hosts[0].Expanded()
	h.Routes = h.Routes[1:]
	b, _ := json.Marshal(h)
	ch := hostChanges(p, map[string][]byte{h.Host: b})
	found := false
	for _, c := range ch {
		if c.Name == h.Host && strings.Contains(c.Detail, "routes") {
			found = true
		}
	}
	if !found {
		t.Errorf("a stored state with a route less: changes %+v", ch)
	}
	// A stored state (expanded) with a firewall rule less: the firewall
	// changes, the routes (the plan's groups, expanded) do not.
	h = p.Hosts[0].Expanded()
	h.Firewall = h.Firewall[1:]
	b, _ = json.Marshal(h)
	ch = hostChanges(p, map[string][]byte{h.Host: b})
	ch = slices.DeleteFunc(ch, func(c api.PlanChange) bool { return c.Name != h.Host }) // the other has no stored state
	if len(ch) != 1 || ch[0].Detail != fmt.Sprintf("firewall rules %d -> %d", len(h.Firewall), len(p.Hosts[0].Firewall)) {
		t.Errorf("a stored state with a firewall rule less: changes %+v, want the firewall rules only", ch)
	}
	// The same with the plan's state derived (schema 1.6: no lists in its
	// peers and VXLAN entries): its lists are its groups', so only the
	// firewall changes, not the peers or VXLAN entries.
	if !p.Hosts[0].Derived {
		t.Fatalf("host %s of the plan is not derived", p.Hosts[0].Host)
	}
	if len(p.Hosts[0].Peers)+len(p.Hosts[0].VXLAN) == 0 {
		t.Fatalf("host %s has no peer and no VXLAN entry: nothing to compare", p.Hosts[0].Host)
	}
}

// TestStoredSchema: hostChanges encodes the new state once, in the form
// the stored one names in its first field; anything else reads as "".
func TestStoredSchema(t *testing.T) {
	for raw, want := range map[string]string{
		`{"schema":"1.6","host":"s1","derived":true}`: "1.6",
		` { "schema" : "1.5", "host":"s1"}`:           "1.5",
		`{"schema":"1.3"}`:                            "1.3",
		`{"host":"s1","schema":"1.6"}`:                "",
		`{"schema":16}`:                               "",
		`[1]`:                                         "",
		``:                                            "",
		`{"sch`:                                       "",
	} {
		if got := storedSchema([]byte(raw)); got != want {
			t.Errorf("storedSchema(%q) = %q, want %q", raw, got, want)
		}
	}
}
