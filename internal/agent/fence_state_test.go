package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// A fenced state must still be a valid state, whatever the full one
// holds: the golden plans with published ports and app-to-app links give
// host states with every kind of path; each, fenced, validates and keeps
// no path at all (a fence that cannot be applied leaves the paths up).
func TestFencedStatesValidate(t *testing.T) {
	for _, dir := range []string{"ingress", "app-to-app", "egress", "shop-3-servers"} {
		b, err := os.ReadFile(filepath.Join("..", "compile", "testdata", dir, "plan.golden.json"))
		if err != nil {
			t.Fatal(err)
		}
		var plan compile.Plan
		if err := json.Unmarshal(b, &plan); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if len(plan.Hosts) == 0 {
			t.Fatalf("%s: no host states in the golden plan", dir)
		}
		for _, st := range plan.Hosts {
			f := fencedState(st)
			if err := hoststate.Validate(f, hoststate.Options{Host: st.Host}); err != nil {
				t.Errorf("%s: fenced state of %s is refused: %v", dir, st.Host, err)
			}
			if len(f.Peers)+len(f.VXLAN)+len(f.Routes)+len(f.Firewall)+len(f.Outbound)+len(f.Ingress) != 0 {
				t.Errorf("%s: fenced state of %s keeps a path: %+v", dir, st.Host, f)
			}
		}
	}
}
