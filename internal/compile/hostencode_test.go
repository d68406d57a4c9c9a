package compile

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestHostStateEncode: the hand-written encoder of host states
// (hoststate.State.Encode, which the server uses) writes what json.Marshal
// writes for every host state of every golden case, of a sized fleet, and
// of a recompile through the cache (whose states share lists with the
// states before), so that the server's stored states stay byte for byte
// what they were.
func TestHostStateEncode(t *testing.T) {
	check := func(name string, p *Plan) {
		t.Helper()
		for i := range p.Hosts {
			h := &p.Hosts[i]
			want, err := json.Marshal(h)
			if err != nil {
				t.Fatal(err)
			}
			got, err := h.Encode()
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s, host %s: Encode (%v) differs from json.Marshal:\n got %.300s\nwant %.300s", name, h.Host, err, got, want)
			}
			// What an agent of schema 1.3/1.4 gets: the state with its
			// route groups expanded, as the goldens show it.
			want, err = json.Marshal(h.Expanded())
			if err != nil {
				t.Fatal(err)
			}
			if got, err = h.EncodeFor("1.3"); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s, host %s: EncodeFor(1.3) (%v) differs from the expanded state:\n got %.300s\nwant %.300s", name, h.Host, err, got, want)
			}
		}
	}
	eachGoldenPlan(t, check)
	servers, apps, div := 60, 8, 10
	if raceDetector {
		servers, apps, div = 24, 4, 20
	}
	in := sizedFleet(servers, apps, div)
	var k Cache
	p, err := k.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	check("fleet", p)
	in.Current, in.Networks = assignments(p)
	in.Apps[0].Classes[0].Tasks++
	if p, err = k.Compile(in); err != nil {
		t.Fatal(err)
	}
	check("fleet, recompiled", p)
}

// TestRouteGroupsShared: every host's route groups to one class hold the
// class's one destination list (the same slice), and a recompile through
// the cache that changes one class gives that class a new list and keeps
// every other class's, on the hosts it rebuilds too. Hosts with routes
// hold them as groups (a positive control for the tests that expand them).
func TestRouteGroupsShared(t *testing.T) {
	servers, apps, div := 60, 8, 10
	if raceDetector {
		servers, apps, div = 24, 4, 20
	}
	in := sizedFleet(servers, apps, div)
	var k Cache
	p, err := k.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	lists := func(p *Plan) map[[2]string]*RouteDest {
		t.Helper()
		m := map[[2]string]*RouteDest{}
		groups := 0
		for _, h := range p.Hosts {
			if len(h.Routes) != 0 {
				t.Fatalf("host %s holds %d routes outside groups", h.Host, len(h.Routes))
			}
			for _, g := range h.RouteGroups {
				groups++
				key := [2]string{g.App, g.Class}
				if q, ok := m[key]; ok && q != &g.Dests[0] {
					t.Fatalf("host %s: groups to %s/%s hold another list than other hosts'", h.Host, g.App, g.Class)
				}
				m[key] = &g.Dests[0]
			}
		}
		if groups == 0 {
			t.Fatal("no route group in the fleet")
		}
		return m
	}
	before := lists(p)
	in.Current, in.Networks = assignments(p)
	changed := in.Apps[0]
	changed.Classes[0].Tasks++
	in.Apps[0] = changed
	if p, err = k.Compile(in); err != nil {
		t.Fatal(err)
	}
	after := lists(p)
	kept, renewed := 0, 0
	for key, q := range after {
		if key == [2]string{changed.Name, changed.Classes[0].Name} {
			if q == before[key] {
				t.Errorf("class %s/%s changed but kept its destination list", key[0], key[1])
			}
			renewed++
			continue
		}
		if q != before[key] {
			t.Errorf("class %s/%s did not change but got a new destination list", key[0], key[1])
		}
		kept++
	}
	if renewed != 1 || kept == 0 {
		t.Errorf("renewed %d lists, kept %d", renewed, kept)
	}
}

// BenchmarkHostStatesEncode is the server's encoding of every host state
// of benchFleet's compile, by json.Marshal (before round 5 of issue 19)
// and by hoststate.State.Encode (the same bytes).
func BenchmarkHostStatesEncode(b *testing.B) {
	p, err := Compile(benchFleet())
	if err != nil {
		b.Fatal(err)
	}
	for _, enc := range []struct {
		name string
		f    func(*HostState) ([]byte, error)
	}{
		{"marshal", func(h *HostState) ([]byte, error) { return json.Marshal(h) }},
		{"encode", (*HostState).Encode},
	} {
		b.Run(enc.name, func(b *testing.B) {
			n := 0
			cpu0 := cpuTime()
			for b.Loop() {
				n = 0
				for i := range p.Hosts {
					js, err := enc.f(&p.Hosts[i])
					if err != nil {
						b.Fatal(err)
					}
					n += len(js)
				}
			}
			reportCPU(b, cpu0)
			b.ReportMetric(float64(n), "bytes")
		})
	}
}
