package compile

import (
	"encoding/json"
	"net/netip"
	"testing"
)

// TestCheckerCatches makes sure the invariant checker the property and
// fuzz tests rely on does fail on a wrong plan: each mutation breaks one
// thing a host must (not) have.
func TestCheckerCatches(t *testing.T) {
	in, good := compileCase(t, "per-pair")
	if err := checkPlan(in, good); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(good)
	fresh := func() *Plan {
		var p Plan
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatal(err)
		}
		return &p
	}
	mutations := map[string]func(p *Plan){
		"drop a peer": func(p *Plan) { p.Hosts[0].Peers = p.Hosts[0].Peers[:0] },
		"peer allows too much": func(p *Plan) {
			p.Hosts[0].Peers[0].AllowedIPs = append(p.Hosts[0].Peers[0].AllowedIPs, netip.MustParsePrefix("100.64.0.9/32"))
		},
		"encrypted over vxlan": func(p *Plan) {
			p.Hosts[1].VXLAN[0].Guests = append(p.Hosts[1].VXLAN[0].Guests, p.Hosts[1].Peers[0].AllowedIPs[0].Addr())
		},
		"route flips":         func(p *Plan) { p.Hosts[0].Routes[1].Encrypt = false },
		"extra firewall rule": func(p *Plan) { p.Hosts[1].Firewall = append(p.Hosts[1].Firewall, p.Hosts[0].Firewall[0]) },
		"path dropped":        func(p *Plan) { p.Paths = NewPaths(p.Paths.Flat()[1:]) },
		"path plain": func(p *Plan) {
			flat := p.Paths.Flat()
			flat[0].Encrypt = !flat[0].Encrypt
			p.Paths = NewPaths(flat)
		},
		"address reused": func(p *Plan) {
			ts := p.Tasks.Flat()
			ts[1].Address = ts[0].Address
			p.Tasks = NewTaskList(ts)
		},
		"task on unknown": func(p *Plan) {
			ts := p.Tasks.Flat()
			ts[0].Server = "s9"
			p.Tasks = NewTaskList(ts)
		},
		"remote sources wrong":  func(p *Plan) { p.Hosts[1].Firewall[0].RemoteSources = nil },
		"guest missing":         func(p *Plan) { p.Hosts[0].Guests = p.Hosts[0].Guests[1:] },
		"nil slice":             func(p *Plan) { p.Hosts[1].Peers = nil },
		"vtep mac wrong":        func(p *Plan) { p.Hosts[0].VTEPMAC = "02:00:00:00:00:00" },
		"route to local server": func(p *Plan) { p.Hosts[0].Routes[0].Server = "s1" },
	}
	for name, m := range mutations {
		p := fresh()
		m(p)
		if err := checkPlan(in, p); err == nil {
			t.Errorf("%s: checker passed a wrong plan", name)
		}
	}
}
