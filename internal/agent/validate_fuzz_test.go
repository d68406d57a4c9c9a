package agent

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
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
			if err := independentCheck(ds.State, "s1"); err != nil {
				t.Fatalf("state accepted by the agent breaks an invariant the data plane relies on: %v", err)
			}
		}
	})
}

// independentCheck restates, without calling the checks under test, what
// an accepted state must hold for the data plane to build it: it is for
// this host, each guest interface has our prefix and fits a Linux
// interface name, no two guests share an interface, and each WireGuard
// peer's key is a key.
func independentCheck(st compile.HostState, host string) error {
	// An empty host is accepted (a state that names no host); another
	// host's state never is.
	if st.Host != "" && st.Host != host {
		return fmt.Errorf("host %q, want %q", st.Host, host)
	}
	ifs := map[string]bool{}
	for i, g := range st.Guests {
		if !strings.HasPrefix(g.HostIf, dataplane.GuestIfPrefix) || len(g.HostIf) > 15 {
			return fmt.Errorf("guests[%d].hostIf %q: not %q plus at most %d characters", i, g.HostIf, dataplane.GuestIfPrefix, 15-len(dataplane.GuestIfPrefix))
		}
		if ifs[g.HostIf] {
			return fmt.Errorf("guests[%d].hostIf %q used twice", i, g.HostIf)
		}
		ifs[g.HostIf] = true
	}
	for i, p := range st.Peers {
		if k, err := base64.StdEncoding.DecodeString(p.PublicKey); err != nil || len(k) != 32 {
			return fmt.Errorf("peers[%d].publicKey %q is not a 32-byte base64 key", i, p.PublicKey)
		}
	}
	return nil
}
