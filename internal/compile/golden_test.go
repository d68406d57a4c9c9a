package compile

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// loadCase reads testdata/<name>: apps.yaml, servers.yaml and, if present,
// current.json (a list of Assignments).
func loadCase(t *testing.T, dir string) Input {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	apps, err := spec.DecodeApps("apps.yaml", read("apps.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	servers, err := spec.DecodeServers("servers.yaml", read("servers.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	in := Input{Apps: apps, Servers: servers}
	if b, err := os.ReadFile(filepath.Join(dir, "current.json")); err == nil {
		if err := json.Unmarshal(b, &in.Current); err != nil {
			t.Fatalf("current.json: %v", err)
		}
	}
	return in
}

// TestGolden compiles every case under testdata and compares the plan (or,
// for a case that must fail, the error) with the golden file. Run
// `go test ./internal/compile -update` to rewrite them after a deliberate
// change, and read the diff.
func TestGolden(t *testing.T) {
	dirs, err := filepath.Glob("testdata/*/apps.yaml")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, f := range dirs {
		dir := filepath.Dir(f)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			in := loadCase(t, dir)
			var got []byte
			golden := filepath.Join(dir, "plan.golden.json")
			plan, err := Compile(in)
			if err != nil {
				golden = filepath.Join(dir, "error.golden.txt")
				got = []byte(err.Error() + "\n")
			} else {
				if err := checkPlan(in, plan); err != nil {
					t.Fatalf("invariant: %v", err)
				}
				got, err = json.MarshalIndent(plan, "", "  ")
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, '\n')
			}
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the compiled output (run with -update and read the diff):\n%s", golden, firstDiff(got, want))
			}
		})
	}
}

func firstDiff(got, want []byte) string {
	gl, wl := bytes.Split(got, []byte("\n")), bytes.Split(want, []byte("\n"))
	for i := 0; i < len(gl) || i < len(wl); i++ {
		var g, w []byte
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if !bytes.Equal(g, w) {
			return "line " + itoa(i+1) + ":\n  got:  " + string(g) + "\n  want: " + string(w)
		}
	}
	return ""
}

func compileCase(t *testing.T, name string) (Input, *Plan) {
	t.Helper()
	in := loadCase(t, filepath.Join("testdata", name))
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	return in, p
}

func hostOf(t *testing.T, p *Plan, name string) *HostState {
	t.Helper()
	for i := range p.Hosts {
		if p.Hosts[i].Host == name {
			return &p.Hosts[i]
		}
	}
	t.Fatalf("no host %s", name)
	return nil
}

// filledHost is hostOf with its peers' and VXLAN entries' lists filled
// (a copy, for a derived state: hoststate.State.Filled).
func filledHost(t *testing.T, p *Plan, name string) *HostState {
	t.Helper()
	h := hostOf(t, p, name).Filled()
	return &h
}

func taskOf(t *testing.T, p *Plan, id string) *Task {
	t.Helper()
	for tk := range p.Tasks.All() {
		if tk.ID == id {
			return &tk
		}
	}
	t.Fatalf("no task %s", id)
	return nil
}

// TestPerPairDecision checks the heart of the method: one destination
// reached encrypted from one class and in plain from another, from the
// same host.
func TestPerPairDecision(t *testing.T) {
	_, p := compileCase(t, "per-pair")
	d := taskOf(t, p, "pair/d/0")
	x := taskOf(t, p, "pair/x/0")
	y0, y1 := taskOf(t, p, "pair/y/0"), taskOf(t, p, "pair/y/1")
	if x.Server != "s1" || y0.Server != "s1" || y1.Server != "s1" || d.Server != "s2" {
		t.Fatalf("placement: x %s, y %s %s, d %s", x.Server, y0.Server, y1.Server, d.Server)
	}
	h := filledHost(t, p, "s1")
	var enc, plain *Route
	hr := h.AllRoutes()
	for i := range hr {
		r := &hr[i]
		if r.Dest != d.Address {
			continue
		}
		if r.Encrypt {
			enc = r
		} else {
			plain = r
		}
	}
	if enc == nil || plain == nil {
		t.Fatalf("s1 routes to %s: %+v", d.Address, hr)
	}
	if !sameAddrs(enc.Sources, []netip.Addr{x.Address}) {
		t.Errorf("encrypted route sources %v, want x %s", enc.Sources, x.Address)
	}
	if !sameAddrs(plain.Sources, []netip.Addr{y0.Address, y1.Address}) {
		t.Errorf("plain route sources %v, want y %s %s", plain.Sources, y0.Address, y1.Address)
	}
	if len(h.Peers) != 1 || h.Peers[0].Server != "s2" || len(h.Peers[0].AllowedIPs) != 1 || h.Peers[0].AllowedIPs[0].Addr() != d.Address {
		t.Errorf("s1 peers %+v", h.Peers)
	}
	if len(h.VXLAN) != 1 || h.VXLAN[0].Server != "s2" || !sameAddrs(h.VXLAN[0].Guests, []netip.Addr{d.Address}) {
		t.Errorf("s1 vxlan %+v", h.VXLAN)
	}
	// The far side: d's host reaches x encrypted and y in plain.
	h2 := filledHost(t, p, "s2")
	if len(h2.Peers) != 1 || !sameAddrs([]netip.Addr{h2.Peers[0].AllowedIPs[0].Addr()}, []netip.Addr{x.Address}) {
		t.Errorf("s2 peers %+v", h2.Peers)
	}
	if len(h2.VXLAN) != 1 || !sameAddrs(h2.VXLAN[0].Guests, []netip.Addr{y0.Address, y1.Address}) {
		t.Errorf("s2 vxlan %+v", h2.VXLAN)
	}
	if got := h2.AllRoutes(); len(got) != 3 {
		t.Errorf("s2 has %d routes, want 3 (to x encrypted, to each y plain): %+v", len(got), got)
	}
}

// TestTwoAppsIsolated checks that nothing on any host mixes the two apps.
func TestTwoAppsIsolated(t *testing.T) {
	_, p := compileCase(t, "two-apps")
	appOf := map[netip.Addr]string{}
	for tk := range p.Tasks.All() {
		appOf[tk.Address] = tk.App
	}
	for pa := range p.Paths.All() {
		if appOf[pa.FromAddr] != appOf[pa.ToAddr] {
			t.Errorf("path crosses apps: %s -> %s", pa.From, pa.To)
		}
	}
	for _, h := range p.Hosts {
		for r := range h.EachRoute() {
			for _, s := range r.Sources {
				if appOf[s] != appOf[r.Dest] {
					t.Errorf("%s: route from %s (%s) to %s (%s)", h.Host, s, appOf[s], r.Dest, appOf[r.Dest])
				}
			}
		}
		for _, f := range h.Firewall {
			for _, a := range append(append([]netip.Addr{}, f.Sources...), f.Dests...) {
				if appOf[a] != f.App {
					t.Errorf("%s: firewall rule of %s names %s of %s", h.Host, f.App, a, appOf[a])
				}
			}
		}
	}
	// blog has no encrypted rule: no peer may list a blog address.
	for _, h := range p.Hosts {
		h = h.Filled()
		for _, pe := range h.Peers {
			for _, ip := range pe.AllowedIPs {
				if appOf[ip.Addr()] != "shop" {
					t.Errorf("%s: peer %s allows %s of %s", h.Host, pe.Server, ip, appOf[ip.Addr()])
				}
			}
		}
	}
}

func TestKeptAndMoved(t *testing.T) {
	in, p := compileCase(t, "server-down")
	cur := map[string]Assignment{}
	for _, a := range in.Current {
		cur[a.Task] = a
	}
	for tk := range p.Tasks.All() {
		c := cur[tk.ID]
		if tk.Address != c.Address {
			t.Errorf("%s changed address %s -> %s", tk.ID, c.Address, tk.Address)
		}
		if c.Server == "s2" {
			if tk.Server == "s2" || tk.Reason.Kept {
				t.Errorf("%s stayed on down s2", tk.ID)
			}
		} else if tk.Server != c.Server || !tk.Reason.Kept || tk.Reason.Chosen != "kept on "+c.Server+" (already running there)" {
			t.Errorf("%s moved from %s to %s (%+v)", tk.ID, c.Server, tk.Server, tk.Reason)
		}
	}
}

func TestPlacementErrorIsTyped(t *testing.T) {
	in := loadCase(t, filepath.Join("testdata", "no-room"))
	_, err := Compile(in)
	var pe *PlacementError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is not a *PlacementError", err)
	}
	if pe.App != "shop" || pe.Class != "db" || pe.Closest != "s1" || pe.Task != "shop/db/0" {
		t.Errorf("%+v", pe)
	}
}
