package dataplane

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// TestRouteGroupsSameDataplane: a host's state as an agent of schema 1.5
// receives it (route groups, through the wire) and as an older one does
// (the routes expanded) give the data plane exactly the same desired
// state: the same marks, routes, peers and ruleset, for every host of
// the compiler's cases with several classes, plain and encrypted pairs;
// so does the derived state an agent of schema 1.6 receives (its peers'
// and VXLAN entries' lists taken from the groups).
func TestRouteGroupsSameDataplane(t *testing.T) {
	groups, nDerived := 0, 0
	for _, c := range []string{"per-pair", "shop-3-servers", "two-apps", "self-rule", "spread-zones"} {
		p := compileCase(t, c)
		for i := range p.Hosts {
			h := &p.Hosts[i]
			groups += len(h.RouteGroups)
			decode := func(schema string) compile.HostState {
				b, err := h.EncodeFor(schema)
				if err != nil {
					t.Fatal(err)
				}
				var st compile.HostState
				if err := json.Unmarshal(b, &st); err != nil {
					t.Fatal(err)
				}
				return st
			}
			newer, older := decode(hoststate.SchemaGroups), decode("")
			if len(h.RouteGroups) > 0 && (len(newer.RouteGroups) == 0 || len(older.RouteGroups) != 0 || len(older.Routes) == 0) {
				t.Fatalf("%s/%s: the 1.5 state has %d groups, the old one %d groups and %d routes", c, h.Host, len(newer.RouteGroups), len(older.RouteGroups), len(older.Routes))
			}
			dn, err := buildDesired(newer)
			if err != nil {
				t.Fatalf("%s/%s, 1.5: %v", c, h.Host, err)
			}
			do, err := buildDesired(older)
			if err != nil {
				t.Fatalf("%s/%s, old: %v", c, h.Host, err)
			}
			if !reflect.DeepEqual(dn.marks, do.marks) || !reflect.DeepEqual(dn.encRoutes, do.encRoutes) || !reflect.DeepEqual(dn.plainRoutes, do.plainRoutes) {
				t.Errorf("%s/%s: marks or routes differ:\n1.5 %+v %v %v\nold %+v %v %v", c, h.Host, dn.marks, dn.encRoutes, dn.plainRoutes, do.marks, do.encRoutes, do.plainRoutes)
			}
			if a, b := buildRuleset(dn, "corw0").text(), buildRuleset(do, "corw0").text(); a != b {
				t.Errorf("%s/%s: rulesets differ:\n1.5 %s\nold %s", c, h.Host, a, b)
			}
			if err := Validate(newer); err != nil {
				t.Errorf("%s/%s: the 1.5 state is refused: %v", c, h.Host, err)
			}
			// A 1.6 agent's derived state (no lists in its peers and
			// VXLAN entries) gives the very desired state of the 1.5
			// one, whose lists are in full.
			derived := decode(hoststate.SchemaDerived)
			if derived.Derived {
				nDerived++
				for _, pe := range derived.Peers {
					if len(pe.AllowedIPs) != 0 {
						t.Fatalf("%s/%s: the 1.6 state's peer %s holds allowed IPs", c, h.Host, pe.Server)
					}
				}
				for _, v := range derived.VXLAN {
					if len(v.Guests) != 0 {
						t.Fatalf("%s/%s: the 1.6 state's VXLAN entry %s holds guests", c, h.Host, v.Server)
					}
				}
			}
			dd, err := buildDesired(derived)
			if err != nil {
				t.Fatalf("%s/%s, 1.6: %v", c, h.Host, err)
			}
			if !reflect.DeepEqual(dd, dn) {
				t.Errorf("%s/%s: the 1.6 state's desired state differs from the 1.5 one's:\n1.6 %+v\n1.5 %+v", c, h.Host, dd, dn)
			}
			if err := Validate(derived); err != nil {
				t.Errorf("%s/%s: the 1.6 state is refused: %v", c, h.Host, err)
			}
		}
	}
	if groups == 0 || nDerived == 0 {
		t.Fatalf("%d hosts hold route groups, %d are derived", groups, nDerived)
	}
}
