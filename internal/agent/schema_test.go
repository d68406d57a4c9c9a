package agent_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// A state of a newer major schema (from a newer server) is refused with a
// clear error and neither kept nor applied: the host stays on its last
// good state, on disk and in the kernel.
func TestNewerSchemaRefused(t *testing.T) {
	h := newHarness(t)
	h.start()
	good := h.apply(t, "the good state applied", state("shop/web/0"))
	applies := h.dp.Applies()

	newer := state("shop/web/0", "shop/web/1")
	newer.Schema = "2.0"
	badRev := h.cp.SetDesired(newer)
	var msg string
	eventually(t, "a status naming the refusal", func() bool {
		sts := h.cp.Statuses(host)
		if len(sts) == 0 {
			return false
		}
		for _, e := range sts[len(sts)-1].Errors {
			if strings.Contains(e, "refused") && strings.Contains(e, "schema 2.0") {
				msg = e
				return true
			}
		}
		return false
	})
	if !strings.Contains(msg, "upgrade corridor") {
		t.Errorf("the refusal does not say what to do: %s", msg)
	}
	if h.dp.Applies() != applies || h.guests.Running("shop/web/1") || h.agent.AppliedRevision() != good {
		t.Fatal("the newer state reached the host")
	}
	ds, _, err := agent.LoadDesired(h.dir)
	if err != nil || ds.Revision != good {
		t.Fatalf("desired.json holds revision %d (%v), want the good %d", ds.Revision, err, good)
	}
	if badRev <= good {
		t.Fatal("revisions did not grow")
	}
}

// A desired.json written before states carried a schema (kept in
// testdata, written by the agent of that time) still loads and validates
// as schema 1.0; being unsigned, it is not applied at start.
func TestLoadDesiredBeforeSchema(t *testing.T) {
	old, err := os.ReadFile(filepath.Join("testdata", "desired-before-schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(old), `"schema"`) {
		t.Fatal("testdata/desired-before-schema.json must stay in the format without a schema")
	}
	h := newHarness(t)
	if err := os.WriteFile(filepath.Join(h.dir, agent.DesiredFile), old, 0o600); err != nil {
		t.Fatal(err)
	}
	ds, ok, err := agent.LoadDesired(h.dir)
	if err != nil || !ok {
		t.Fatalf("load: ok %v, %v", ok, err)
	}
	if ds.Revision != 42 || ds.State.Host != host || len(ds.State.Guests) != 1 || len(ds.State.Peers) != 1 ||
		len(ds.State.VXLAN) != 1 || len(ds.State.Routes) != 2 || len(ds.State.Firewall) != 2 {
		t.Fatalf("loaded %+v", ds)
	}
	if err := hoststate.Validate(ds.State, hoststate.Options{Host: host}); err != nil {
		t.Fatalf("the old state is refused: %v", err)
	}

	// It is not signed (it was written before states were): with the
	// server away, the agent refuses it at start, applies nothing and says
	// why; once the server answers, its signed state applies.
	preJoin(t, h.cp, h.dir)
	h.cp.SetDown(true)
	h.start()
	eventually(t, "the refusal in the status", func() bool {
		for _, e := range h.agent.Status(context.Background()).Errors {
			if strings.Contains(e, agent.DesiredFile) && strings.Contains(e, "not signed") {
				return true
			}
		}
		return false
	})
	if h.dp.Applies() != 0 || h.guests.Running("shop/web/0") || h.agent.AppliedRevision() != 0 {
		t.Fatal("the unsigned stored state was applied")
	}
	h.cp.SetDown(false)
	h.apply(t, "the server's signed state applied", ds.State)
	if !h.dp.InSync(ds.State) || !h.guests.Running("shop/web/0") {
		t.Fatal("the data plane does not hold the signed state")
	}
}

// The agent reports the newest host-state schema it reads, and applies
// both a state of route groups (schema 1.5, what the control plane
// writes to it once it reported that) and a state of today's expanded
// routes (what a control plane writes to it before it reported, or one
// that predates route groups), handing the data plane each as it came:
// the data plane expands the groups (dataplane's
// TestRouteGroupsSameDataplane).
func TestAgentReadsRouteGroupsAndRoutes(t *testing.T) {
	h := newHarness(t)
	h.start()
	old := state("shop/web/0", "shop/web/1")
	h.apply(t, "a state of expanded routes applied", old)
	if !h.dp.InSync(old) {
		t.Fatal("the data plane does not hold the state of routes")
	}
	eventually(t, "a status reporting the schema read", func() bool {
		sts := h.cp.Statuses(host)
		return len(sts) > 0 && sts[len(sts)-1].Schema == hoststate.ReadSchema
	})
	if !hoststate.ReadsGroups(hoststate.ReadSchema) {
		t.Fatalf("the agent reports schema %s, which does not read route groups", hoststate.ReadSchema)
	}

	groups := old
	groups.Schema = hoststate.SchemaGroups
	groups.Routes = []hoststate.Route{}
	groups.Guests = slices.Clone(old.Guests)
	for i := range groups.Guests {
		groups.Guests[i].Network = netip.MustParsePrefix("100.64.0.0/24") // required since 1.1
	}
	groups.RouteGroups = []hoststate.RouteGroup{
		{App: "shop", Class: "db", Sources: old.Routes[0].Sources, Encrypt: true,
			Dests: []hoststate.RouteDest{{Addr: old.Routes[0].Dest, Server: "s2"}}},
		{App: "shop", Class: "cache", Sources: old.Routes[1].Sources,
			Dests: []hoststate.RouteDest{{Addr: old.Routes[1].Dest, Server: "s3"}}},
	}
	if got, want := groups.AllRoutes(), old.Routes; len(got) != len(want) || got[0].Dest != want[0].Dest || got[1].Dest != want[1].Dest {
		t.Fatalf("the groups expand to %v, want %v", got, want)
	}
	h.apply(t, "a state of route groups applied", groups)
	if !h.dp.InSync(groups) {
		t.Fatal("the data plane does not hold the state of route groups")
	}
	ds, _, err := agent.LoadDesired(h.dir)
	if err != nil || ds.State.Schema != hoststate.SchemaGroups || len(ds.State.RouteGroups) != 2 {
		t.Fatalf("desired.json holds schema %q, %d groups (%v)", ds.State.Schema, len(ds.State.RouteGroups), err)
	}
}

// derivedState is state(tasks...) as the control plane writes it to an
// agent of schema 1.6: its routes as groups, and its peers and VXLAN
// entries without their lists, which the groups give (State.Derived).
func derivedState(tasks ...string) hoststate.State {
	old := state(tasks...)
	st := old
	st.Schema = hoststate.SchemaDerived
	st.Derived = true
	st.Routes = []hoststate.Route{}
	st.Guests = slices.Clone(old.Guests)
	for i := range st.Guests {
		st.Guests[i].Network = netip.MustParsePrefix("100.64.0.0/24")
	}
	st.RouteGroups = []hoststate.RouteGroup{
		{App: "shop", Class: "db", Sources: old.Routes[0].Sources, Encrypt: true,
			Dests: []hoststate.RouteDest{{Addr: old.Routes[0].Dest, Server: "s2"}}},
		{App: "shop", Class: "cache", Sources: old.Routes[1].Sources,
			Dests: []hoststate.RouteDest{{Addr: old.Routes[1].Dest, Server: "s3"}}},
	}
	st.Peers = slices.Clone(old.Peers)
	st.Peers[0].AllowedIPs = nil
	st.VXLAN = slices.Clone(old.VXLAN)
	st.VXLAN[0].Guests = nil
	return st
}

// The agent reads a derived state (schema 1.6): it validates and applies
// it, hands the data plane the state as it came (the data plane fills the
// lists: dataplane's TestRouteGroupsSameDataplane), and its prober finds
// a remote guest's host through the derived lists. A derived state whose
// lists cannot be derived (a server reached that has no peer) is refused
// and not applied.
func TestAgentReadsDerivedState(t *testing.T) {
	if !hoststate.ReadsDerived(hoststate.ReadSchema) {
		t.Fatalf("the agent reports schema %s, which does not read derived states", hoststate.ReadSchema)
	}
	h := newHarness(t)
	h.start()
	st := derivedState("shop/web/0", "shop/web/1")
	h.apply(t, "a derived state applied", st)
	if !h.dp.InSync(st) {
		t.Fatal("the data plane does not hold the derived state")
	}
	full := state("shop/web/0", "shop/web/1")
	for _, r := range full.Routes {
		want := full.VXLAN[0].Underlay
		if r.Encrypt {
			want = full.Peers[0].Endpoint.Addr()
		}
		if got, ok := h.agent.PeerUnderlay(r.Dest); !ok || got != want {
			t.Errorf("PeerUnderlay(%s) = %s, %v; want %s", r.Dest, got, ok, want)
		}
	}
	if _, ok := h.agent.PeerUnderlay(netip.MustParseAddr("100.64.0.99")); ok {
		t.Error("PeerUnderlay finds a host for an address no list holds")
	}
	applies := h.dp.Applies()

	bad := derivedState("shop/web/0", "shop/web/1", "shop/web/2")
	bad.Peers = nil // s2 is reached encrypted, and has no peer
	h.cp.SetDesired(bad)
	eventually(t, "a status naming the refusal", func() bool {
		sts := h.cp.Statuses(host)
		if len(sts) == 0 {
			return false
		}
		for _, e := range sts[len(sts)-1].Errors {
			if strings.Contains(e, "no WireGuard peer") {
				return true
			}
		}
		return false
	})
	if h.dp.Applies() != applies || h.guests.Running("shop/web/2") {
		t.Fatal("the state that cannot be derived reached the host")
	}
}
