package compile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// randInput makes a random, valid input: a few servers in zones, some
// draining or down, and a few apps whose classes and rules are drawn at
// random with one encryption decision per class pair.
func randInput(r *rand.Rand) Input {
	var in Input
	nServers := 1 + r.Intn(8)
	for i := range nServers {
		s := spec.Server{
			Name:      fmt.Sprintf("s%d", i+1),
			Address:   fmt.Sprintf("198.18.0.%d", 10+i),
			Capacity:  spec.Resources{CPU: spec.MilliCPU(1000 + r.Intn(8)*500), Memory: spec.Bytes((1 + r.Intn(16)) << 30)},
			Labels:    map[string]string{"zone": string(rune('a' + r.Intn(3)))},
			PublicKey: fmt.Sprintf("key-%d", i+1),
		}
		if r.Intn(2) == 0 {
			s.Labels["disk"] = "ssd"
		}
		switch r.Intn(10) {
		case 0:
			s.State = spec.ServerDraining
		case 1:
			s.State = spec.ServerDown
		case 2:
			s.State = spec.ServerReady
		}
		if r.Intn(4) == 0 {
			s.WireGuardPort = 51821
		}
		in.Servers = append(in.Servers, s)
	}
	nApps := 1 + r.Intn(3)
	for i := range nApps {
		a := spec.App{APIVersion: spec.APIVersion, Kind: spec.KindApp, Name: fmt.Sprintf("app%d", i)}
		if r.Intn(4) == 0 {
			a.Network = fmt.Sprintf("100.%d.0.0/24", 80+i)
		}
		nClasses := 1 + r.Intn(4)
		for j := range nClasses {
			c := spec.Class{
				Name:      fmt.Sprintf("c%d", j),
				Tasks:     r.Intn(6),
				Guest:     spec.Guest{Runtime: spec.RuntimeNetns, Command: []string{"sleep", "infinity"}},
				Resources: spec.Resources{CPU: spec.MilliCPU(50 + r.Intn(10)*50), Memory: spec.Bytes((16 + r.Intn(16)*16) << 20)},
			}
			if r.Intn(5) == 0 {
				c.Placement.Labels = map[string]string{"disk": "ssd"}
			}
			if r.Intn(5) == 0 {
				c.Placement.SpreadBy = "zone"
			}
			if r.Intn(5) == 0 {
				c.Guest.Env = map[string]string{"MODE": "x"}
			}
			a.Classes = append(a.Classes, c)
		}
		enc := map[[2]int]bool{}
		for x := range nClasses {
			for y := range nClasses {
				if r.Intn(5) >= 2 {
					continue
				}
				k := [2]int{min(x, y), max(x, y)}
				e, ok := enc[k]
				if !ok {
					e = r.Intn(2) == 0
					enc[k] = e
				}
				ports := []int{80, 443, 5432, 6379}
				rule := spec.Rule{From: a.Classes[x].Name, To: a.Classes[y].Name,
					Ports: ports[r.Intn(2) : 2+r.Intn(3)], Encrypt: e}
				if r.Intn(3) == 0 {
					rule.Protocol = spec.ProtoUDP
				}
				a.Rules = append(a.Rules, rule)
			}
		}
		in.Apps = append(in.Apps, a)
	}
	// App to app: an app may import a service of an app before it (never
	// the other way, so that no class pair is encrypted one way and plain
	// the other).
	for i := 1; i < len(in.Apps); i++ {
		if r.Intn(2) == 0 {
			continue
		}
		ex, im := &in.Apps[r.Intn(i)], &in.Apps[i]
		ex.Exports = append(ex.Exports, spec.Export{Name: "svc", Class: ex.Classes[r.Intn(len(ex.Classes))].Name, Ports: []int{80, 7000}, Protocol: spec.ProtoTCP})
		im.Imports = append(im.Imports, spec.Import{Service: ex.Name + "/svc", As: "svc"})
		for _, c := range im.Classes {
			if r.Intn(2) == 0 {
				im.Rules = append(im.Rules, spec.Rule{From: c.Name, To: "svc", Ports: []int{7000, 80}[:1+r.Intn(2)], Protocol: spec.ProtoTCP, Encrypt: r.Intn(2) == 0})
			}
		}
	}
	return in
}

// assignments reduces a plan to what the next compile is given.
func assignments(p *Plan) ([]Assignment, map[string]netip.Prefix) {
	cur := make([]Assignment, p.Tasks.Len())
	for i, t := range p.Tasks.Flat() {
		cur[i] = Assignment{Task: t.ID, Server: t.Server, Address: t.Address}
	}
	nets := map[string]netip.Prefix{}
	for _, n := range p.Networks {
		nets[n.App] = n.Network
	}
	return cur, nets
}

func mustJSON(t *testing.T, p *Plan) []byte {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func shuffled(r *rand.Rand, in Input) Input {
	out := in
	out.Servers = slices.Clone(in.Servers)
	out.Apps = slices.Clone(in.Apps)
	out.Current = slices.Clone(in.Current)
	r.Shuffle(len(out.Servers), func(i, j int) { out.Servers[i], out.Servers[j] = out.Servers[j], out.Servers[i] })
	r.Shuffle(len(out.Apps), func(i, j int) { out.Apps[i], out.Apps[j] = out.Apps[j], out.Apps[i] })
	r.Shuffle(len(out.Current), func(i, j int) { out.Current[i], out.Current[j] = out.Current[j], out.Current[i] })
	return out
}

func TestProperties(t *testing.T) {
	iterations := 400
	if testing.Short() {
		iterations = 100
	}
	r := rand.New(rand.NewSource(1))
	var compiled, full, scaled int
	for it := range iterations {
		in := randInput(r)
		p, err := Compile(in)
		var pe *PlacementError
		if errors.As(err, &pe) {
			full++
			continue
		}
		if err != nil {
			t.Fatalf("iteration %d: %v", it, err)
		}
		compiled++
		if err := checkPlan(in, p); err != nil {
			t.Fatalf("iteration %d: %v", it, err)
		}
		first := mustJSON(t, p)

		// A recompile from the plan's own placement keeps everything.
		in.Current, in.Networks = assignments(p)
		p2, err := Compile(in)
		if err != nil {
			t.Fatalf("iteration %d: recompile: %v", it, err)
		}
		if err := checkPlan(in, p2); err != nil {
			t.Fatalf("iteration %d: recompile: %v", it, err)
		}
		was := p.Tasks.Flat()
		for i, tk := range p2.Tasks.Flat() {
			if tk.Server != was[i].Server || tk.Address != was[i].Address || !tk.Reason.Kept {
				t.Fatalf("iteration %d: recompile moved %s: %s %s -> %s %s", it, tk.ID, was[i].Server, was[i].Address, tk.Server, tk.Address)
			}
		}
		again := mustJSON(t, p2)

		// Same bytes whatever the order of servers, apps and current.
		for range 3 {
			p3, err := Compile(shuffled(r, in))
			if err != nil {
				t.Fatalf("iteration %d: shuffled: %v", it, err)
			}
			if !bytes.Equal(mustJSON(t, p3), again) {
				t.Fatalf("iteration %d: output depends on input order", it)
			}
		}
		in.Current, in.Networks = nil, nil
		if p4, _ := Compile(shuffled(r, in)); !bytes.Equal(mustJSON(t, p4), first) {
			t.Fatalf("iteration %d: output depends on input order (no current)", it)
		}

		// Scaling one class up or down moves no other task.
		in.Current, in.Networks = assignments(p)
		ai := r.Intn(len(in.Apps))
		a := in.Apps[ai]
		a.Classes = slices.Clone(a.Classes)
		ci := r.Intn(len(a.Classes))
		a.Classes[ci].Tasks = max(0, a.Classes[ci].Tasks+r.Intn(5)-2)
		in.Apps = slices.Clone(in.Apps)
		in.Apps[ai] = a
		p5, err := Compile(in)
		if errors.As(err, &pe) {
			continue
		}
		if err != nil {
			t.Fatalf("iteration %d: scaled: %v", it, err)
		}
		if err := checkPlan(in, p5); err != nil {
			t.Fatalf("iteration %d: scaled: %v", it, err)
		}
		scaled++
		before := map[string]Task{}
		for tk := range p.Tasks.All() {
			before[tk.ID] = tk
		}
		for tk := range p5.Tasks.All() {
			b, ok := before[tk.ID]
			if ok && (b.Server != tk.Server || b.Address != tk.Address) {
				t.Fatalf("iteration %d: scaling %s/%s moved %s", it, a.Name, a.Classes[ci].Name, tk.ID)
			}
		}
	}
	t.Logf("%d compiled, %d full fleets, %d scaled", compiled, full, scaled)
	if compiled < iterations/2 {
		t.Errorf("only %d of %d random inputs compiled: the generator makes fleets too small", compiled, iterations)
	}
}

// TestCurrentNoise feeds a Current full of stale and wrong entries: unknown
// tasks and servers, addresses outside the network, duplicate addresses.
func TestCurrentNoise(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	for it := range 200 {
		in := randInput(r)
		p, err := Compile(in)
		if err != nil {
			continue
		}
		cur, _ := assignments(p)
		for i := range cur {
			switch r.Intn(5) {
			case 0:
				cur[i].Server = "gone"
			case 1:
				cur[i].Address = netip.MustParseAddr("10.9.9.9")
			case 2:
				cur[i].Address = cur[0].Address
			case 3:
				cur[i].Task += "0"
			}
		}
		in.Current = cur
		p2, err := Compile(in)
		var pe *PlacementError
		if errors.As(err, &pe) {
			continue
		}
		if err != nil {
			if ie := (*InputError)(nil); errors.As(err, &ie) && ie.Field == "current" {
				continue // a task listed twice after the renames
			}
			t.Fatalf("iteration %d: %v", it, err)
		}
		if err := checkPlan(in, p2); err != nil {
			t.Fatalf("iteration %d: %v", it, err)
		}
	}
}

func TestInputErrors(t *testing.T) {
	base := func() Input {
		return Input{
			Servers: []spec.Server{{Name: "s1", Address: "198.18.0.1", Capacity: spec.Resources{CPU: 1000, Memory: 1 << 30}}},
			Apps: []spec.App{{Name: "a", Classes: []spec.Class{{Name: "x", Tasks: 1}, {Name: "y", Tasks: 1}},
				Rules: []spec.Rule{{From: "x", To: "y", Ports: []int{80}}}}},
		}
	}
	cases := []struct {
		name  string
		edit  func(*Input)
		field string
	}{
		{"bad address", func(in *Input) { in.Servers[0].Address = "nope" }, "servers[s1].address"},
		{"dup server", func(in *Input) { in.Servers = append(in.Servers, in.Servers[0]) }, "servers[s1]"},
		{"bad state", func(in *Input) { in.Servers[0].State = "asleep" }, "servers[s1].state"},
		{"negative key generation", func(in *Input) { in.Servers[0].KeyGeneration = -1 }, "servers[s1].keyGeneration"},
		{"negative tasks", func(in *Input) { in.Apps[0].Classes[0].Tasks = -1 }, "apps[a].classes[x].tasks"},
		{"unknown class", func(in *Input) { in.Apps[0].Rules[0].To = "z" }, "apps[a].rules[0].to"},
		{"bad port", func(in *Input) { in.Apps[0].Rules[0].Ports = []int{0} }, "apps[a].rules[0].ports"},
		{"bad network", func(in *Input) { in.Apps[0].Network = "100.64.0.1/24" }, "apps[a].network"},
		{"network too small", func(in *Input) { in.Apps[0].Network = "100.64.0.0/31" }, "apps[a].network"},
		{"encrypt disagrees", func(in *Input) {
			in.Apps[0].Rules = append(in.Apps[0].Rules, spec.Rule{From: "y", To: "x", Ports: []int{81}, Encrypt: true})
		}, "apps[a].rules[1].encrypt"},
		{"overlap", func(in *Input) {
			in.Apps[0].Network = "100.64.0.0/16"
			in.Apps = append(in.Apps, spec.App{Name: "b", Network: "100.64.1.0/24"})
		}, "apps[b].network"},
		{"slash in name", func(in *Input) { in.Apps[0].Name = "a/b" }, "apps[0].name"},
		{"ipv6 pool", func(in *Input) { in.Pool = netip.MustParsePrefix("fd00::/64") }, "pool"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := base()
			c.edit(&in)
			_, err := Compile(in)
			var ie *InputError
			if !errors.As(err, &ie) || ie.Field != c.field {
				t.Fatalf("got %v, want an InputError on %s", err, c.field)
			}
		})
	}
}

func TestNetworkAllocation(t *testing.T) {
	srv := []spec.Server{{Name: "s1", Address: "198.18.0.1", Capacity: spec.Resources{CPU: 1 << 40, Memory: 1 << 50}}}
	app := func(name, network string, tasks int) spec.App {
		return spec.App{Name: name, Network: network, Classes: []spec.Class{{Name: "x", Tasks: tasks}}}
	}
	in := Input{
		Servers: srv,
		Apps: []spec.App{
			app("d", "", 300),              // needs a /23
			app("a", "100.64.0.0/24", 1),   // explicit, takes the first /24
			app("c", "", 1),                // next free /24
			app("b", "", 1),                // kept from an earlier compile
			app("e", "", 2000),             // a /21
			app("f", "100.64.16.0/24", 10), // explicit, in the middle of the pool
		},
		Networks: map[string]netip.Prefix{"b": netip.MustParsePrefix("100.64.5.0/24"), "gone": netip.MustParsePrefix("100.64.1.0/24")},
	}
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, n := range p.Networks {
		got[n.App] = n.Network.String()
	}
	want := map[string]string{"a": "100.64.0.0/24", "b": "100.64.5.0/24", "c": "100.64.1.0/24",
		"d": "100.64.2.0/23", "e": "100.64.8.0/21", "f": "100.64.16.0/24"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("app %s got %s, want %s", k, got[k], v)
		}
	}
	if err := checkPlan(in, p); err != nil {
		t.Fatal(err)
	}
	// A network kept from before that the app outgrew is replaced.
	in.Apps[3].Classes[0].Tasks = 600
	p, err = Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if n := p.Networks[1]; n.App != "b" || n.Network.Bits() != 22 {
		t.Errorf("outgrown network: %+v", n)
	}
	// A full pool is an error naming the pool.
	in.Pool = netip.MustParsePrefix("10.0.0.0/23")
	_, err = Compile(in)
	var ie *InputError
	if !errors.As(err, &ie) {
		t.Errorf("full pool: %v", err)
	}
}

func TestHelpers(t *testing.T) {
	if got := VTEPMAC(netip.MustParseAddr("198.18.0.11")); got != "02:c0:c6:12:00:0b" {
		t.Errorf("VTEPMAC v4 = %s", got)
	}
	if VTEPMAC(netip.MustParseAddr("::ffff:198.18.0.11")) != VTEPMAC(netip.MustParseAddr("198.18.0.11")) {
		t.Error("VTEPMAC differs for a v4-mapped address")
	}
	v6a, v6b := VTEPMAC(netip.MustParseAddr("fd00::1")), VTEPMAC(netip.MustParseAddr("fd00::2"))
	if v6a == v6b || len(v6a) != 17 || v6a[:6] != "02:c6:" {
		t.Errorf("VTEPMAC v6: %s %s", v6a, v6b)
	}
	h := HostIf("shop/web/0")
	if len(h) != 14 || h[:4] != "corg" || h == HostIf("shop/web/1") {
		t.Errorf("HostIf = %q", h)
	}
	for _, c := range []struct {
		b    int64
		want string
	}{{0, "0"}, {1 << 30, "1Gi"}, {3 << 29, "1536Mi"}, {1000, "1000"}, {64 << 20, "64Mi"}} {
		if got := fmtBytes(c.b); got != c.want {
			t.Errorf("fmtBytes(%d) = %s, want %s", c.b, got, c.want)
		}
	}
}
