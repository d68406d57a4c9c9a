package agent

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/dataplane"
	"github.com/corridor-dev/corridor/internal/spec"
)

// FuzzDesiredState feeds desired states, as a buggy or hostile server could
// send them, to the agent's checks: whatever the bytes, the checks answer
// (accept or refuse with a field), and never panic. A state they accept
// must also be one the data plane can build.
func FuzzDesiredState(f *testing.F) {
	apps, err := spec.DecodeApps("shop.yaml", examples.Shop)
	if err != nil {
		f.Fatal(err)
	}
	var servers []spec.Server
	for i, n := range []string{"s1", "s2", "s3"} {
		servers = append(servers, spec.Server{Name: n, Address: netip.AddrFrom4([4]byte{198, 18, 0, byte(11 + i)}).String(),
			Capacity: spec.Resources{CPU: 4000, Memory: 8 << 30}, PublicKey: "cHVibGljLWtleS1vZi1zMS0wMDAwMDAwMDAwMDAwMDA="})
	}
	plan, err := compile.Compile(compile.Input{Apps: apps, Servers: servers})
	if err != nil {
		f.Fatal(err)
	}
	for _, h := range plan.Hosts {
		b, err := json.Marshal(api.DesiredState{Revision: 1, State: h})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"revision":2,"state":{"host":"s1","keyGeneration":-1}}`))
	f.Add([]byte(`{"state":{"host":"s1","guests":[{"task":"x","address":"127.0.0.1"}]}}`))
	a := &Agent{cfg: Config{Name: "s1", ServerAddrs: []netip.Addr{netip.MustParseAddr("198.18.0.1")}, ValidateDataplane: dataplane.Validate}}
	f.Fuzz(func(t *testing.T, b []byte) {
		var ds api.DesiredState
		if json.Unmarshal(b, &ds) != nil {
			return
		}
		if err := a.validateState(ds.State); err == nil {
			if err := dataplane.Validate(ds.State); err != nil {
				t.Fatalf("state accepted by the agent but not by the data plane: %v", err)
			}
		}
	})
}
