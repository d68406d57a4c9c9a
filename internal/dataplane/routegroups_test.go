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
// the compiler's cases with several classes, plain and encrypted pairs.
func TestRouteGroupsSameDataplane(t *testing.T) {
	groups := 0
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
		}
	}
	if groups == 0 {
		t.Fatal("no host holds route groups")
	}
}
