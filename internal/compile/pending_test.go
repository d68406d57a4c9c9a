package compile

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// pendingCase is testdata/pending-host-loss compiled with Input.Pending.
func pendingCase(t *testing.T) (Input, *Plan) {
	t.Helper()
	in := loadCase(t, filepath.Join("testdata", "pending-host-loss"))
	in.Pending = true
	p, err := Compile(in)
	if err != nil {
		t.Fatalf("a compile with Pending failed: %v", err)
	}
	return in, p
}

// TestPendingGolden: after a host loss with too little room, the tasks
// that fit nowhere are pending with the reason, keep their addresses, and
// have no guest, route, peer or path; everything else is placed. The
// plan is compared with pending.golden.json (-update rewrites it).
func TestPendingGolden(t *testing.T) {
	_, p := pendingCase(t)
	got, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	golden := filepath.Join("testdata", "pending-host-loss", "pending.golden.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the compiled output (run with -update and read the diff):\n%s", golden, firstDiff(got, want))
	}

	wantWhy := map[string]string{
		"shop/db/0":    "no server fits: needs cpu 1000m, memory 128Mi; the closest, s1, has cpu 500m, memory 896Mi free (short cpu 500m)",
		"shop/cache/0": "no ready server has labels zone=c (needs cpu 100m, memory 64Mi)",
	}
	wantAddr := map[string]string{"shop/db/0": "100.64.0.1", "shop/cache/0": "100.64.0.4"}
	if len(p.Pending) != len(wantWhy) {
		t.Fatalf("pending = %+v, want %d tasks", p.Pending, len(wantWhy))
	}
	for _, pt := range p.Pending {
		if pt.Pending != wantWhy[pt.ID] || pt.Server != "" || pt.Address.String() != wantAddr[pt.ID] {
			t.Errorf("pending %s: server %q, address %s, why %q; want address %s, why %q", pt.ID, pt.Server, pt.Address, pt.Pending, wantAddr[pt.ID], wantWhy[pt.ID])
		}
	}
	if p.Tasks.Len() != 2 {
		t.Fatalf("placed %+v, want the two web tasks", p.Tasks)
	}
	for tk := range p.Tasks.All() {
		if tk.Server != "s1" {
			t.Errorf("%s on %q, want s1", tk.ID, tk.Server)
		}
	}
	assertNowhere(t, p, "100.64.0.1", "100.64.0.4")
	// Their peers' environment still lists them (stable, so that no peer
	// restarts when they go pending and come back).
	for _, g := range hostOf(t, p, "s1").Guests {
		if g.Env["CORRIDOR_PEERS_DB"] != "100.64.0.1:5432" || g.Env["CORRIDOR_PEERS_CACHE"] != "100.64.0.4:6379" {
			t.Errorf("%s env %v", g.Task, g.Env)
		}
	}
}

// assertNowhere fails if any path, guest, route, peer or VXLAN entry of
// the plan names one of addrs.
func assertNowhere(t *testing.T, p *Plan, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		for x := range p.Paths.All() {
			if x.FromAddr.String() == a || x.ToAddr.String() == a {
				t.Errorf("path %s -> %s names pending address %s", x.From, x.To, a)
			}
		}
		for _, h := range p.Hosts {
			for _, g := range h.Guests {
				if g.Address.String() == a {
					t.Errorf("host %s runs a guest at pending address %s", h.Host, a)
				}
			}
			for r := range h.EachRoute() {
				if r.Dest.String() == a {
					t.Errorf("host %s routes pending address %s", h.Host, a)
				}
			}
			h = h.Filled()
			for _, pe := range h.Peers {
				for _, ip := range pe.AllowedIPs {
					if ip.Addr().String() == a {
						t.Errorf("host %s: peer %s allows pending address %s", h.Host, pe.Server, a)
					}
				}
			}
			for _, v := range h.VXLAN {
				for _, g := range v.Guests {
					if g.String() == a {
						t.Errorf("host %s: VXLAN entry for %s lists pending address %s", h.Host, v.Server, a)
					}
				}
			}
		}
	}
}

// current is what the server feeds the next compile: placed tasks with
// their server, pending ones without.
func current(p *Plan) []Assignment {
	var out []Assignment
	for tk := range p.Tasks.All() {
		out = append(out, Assignment{Task: tk.ID, Server: tk.Server, Address: tk.Address})
	}
	for _, tk := range p.Pending {
		out = append(out, Assignment{Task: tk.ID, Address: tk.Address})
	}
	return out
}

// TestPendingPlacedWhenRoomComes: the next compile after a server comes
// back, or a new one joins, places the pending tasks there, at the
// addresses they kept, with the same rules, and says they were pending.
func TestPendingPlacedWhenRoomComes(t *testing.T) {
	in, p := pendingCase(t)
	for _, tc := range []struct {
		name   string
		change func(in *Input)
	}{
		{"server back up", func(in *Input) { in.Servers[1].State = spec.ServerReady }},
		{"server joins", func(in *Input) {
			in.Servers = append(in.Servers, spec.Server{Name: "s3", Address: "198.18.0.13",
				Capacity: spec.Resources{CPU: 2000, Memory: 1 << 30}, Labels: map[string]string{"zone": "c"}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := in
			next.Servers = append([]spec.Server(nil), in.Servers...)
			next.Current = current(p)
			tc.change(&next)
			q, err := Compile(next)
			if err != nil {
				t.Fatal(err)
			}
			if len(q.Pending) != 0 {
				t.Fatalf("still pending: %+v", q.Pending)
			}
			if err := checkPlan(next, q); err != nil {
				t.Fatalf("invariant: %v", err)
			}
			byID := map[string]Task{}
			for tk := range q.Tasks.All() {
				byID[tk.ID] = tk
			}
			for id, addr := range map[string]string{"shop/db/0": "100.64.0.1", "shop/cache/0": "100.64.0.4"} {
				tk := byID[id]
				if tk.Address.String() != addr || tk.Server == "s1" || !strings.HasPrefix(tk.Reason.Chosen, "was pending; ") {
					t.Errorf("%s on %s at %s: %q", id, tk.Server, tk.Address, tk.Reason.Chosen)
				}
			}
			// The web tasks stay where they are.
			for _, id := range []string{"shop/web/0", "shop/web/1"} {
				if byID[id].Server != "s1" || !byID[id].Reason.Kept {
					t.Errorf("%s moved: %+v", id, byID[id])
				}
			}
			n := 0
			for x := range q.Paths.All() {
				if x.To == "shop/db/0" || x.To == "shop/cache/0" {
					n++
				}
			}
			if n != 4 {
				t.Errorf("%d paths to the tasks that were pending, want 4", n)
			}
		})
	}
}

// TestPendingFreedRoom: a task pending for lack of room is placed once
// another app is removed and frees it, and the room is counted right: a
// second pending task that still does not fit stays pending.
func TestPendingFreedRoom(t *testing.T) {
	big := func(name string, tasks int) spec.App {
		return spec.App{Name: name, Classes: []spec.Class{{Name: "x", Tasks: tasks,
			Resources: spec.Resources{CPU: 600, Memory: 1 << 20}}}}
	}
	srv := []spec.Server{{Name: "s1", Address: "198.18.0.1", Capacity: spec.Resources{CPU: 1000, Memory: 1 << 30}}}
	in := Input{Servers: srv, Apps: []spec.App{big("a", 1), big("b", 2)}, Pending: true}
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if p.Tasks.Len() != 1 || p.Tasks.Flat()[0].ID != "a/x/0" || len(p.Pending) != 2 {
		t.Fatalf("tasks %+v, pending %+v", p.Tasks, p.Pending)
	}
	in.Apps = in.Apps[1:]
	in.Current = current(p)
	in.Networks = map[string]netip.Prefix{}
	for _, n := range p.Networks {
		in.Networks[n.App] = n.Network
	}
	q, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if q.Tasks.Len() != 1 || q.Tasks.Flat()[0].ID != "b/x/0" || q.Tasks.Flat()[0].Server != "s1" || len(q.Pending) != 1 || q.Pending[0].ID != "b/x/1" {
		t.Fatalf("tasks %+v, pending %+v", q.Tasks, q.Pending)
	}
	if q.Tasks.Flat()[0].Address != p.Pending[0].Address {
		t.Errorf("b/x/0 got %s, had %s while pending", q.Tasks.Flat()[0].Address, p.Pending[0].Address)
	}
}

// TestPendingOnlyWhenAsked: without Input.Pending the same input is a
// *PlacementError, as before.
func TestPendingOnlyWhenAsked(t *testing.T) {
	in := loadCase(t, filepath.Join("testdata", "pending-host-loss"))
	_, err := Compile(in)
	var pe *PlacementError
	if !errors.As(err, &pe) || pe.Task != "shop/db/0" {
		t.Fatalf("err = %v, want a *PlacementError for shop/db/0", err)
	}
}

// TestPendingCache: a Cache gives the same bytes as Compile through a
// host loss with pending tasks and back.
func TestPendingCache(t *testing.T) {
	in, p := pendingCase(t)
	var k Cache
	steps := []Input{in}
	back := in
	back.Servers = append([]spec.Server(nil), in.Servers...)
	back.Servers[1].State = spec.ServerReady
	back.Current = current(p)
	// A pending task's address is in its peers' environment: a new one
	// must not be taken from the cache.
	moved := in
	moved.Current = current(p)
	for i := range moved.Current {
		if moved.Current[i].Task == "shop/db/0" {
			moved.Current[i].Address = netip.MustParseAddr("100.64.0.9")
		}
	}
	steps = append(steps, back, in, moved)
	for i, s := range steps {
		want, err := Compile(s)
		if err != nil {
			t.Fatal(err)
		}
		got, err := k.Compile(s)
		if err != nil {
			t.Fatal(err)
		}
		wb, _ := json.Marshal(want)
		gb, _ := json.Marshal(got)
		if !bytes.Equal(wb, gb) {
			t.Fatalf("step %d: the cache's plan differs from Compile's:\n%s", i, firstDiff(gb, wb))
		}
	}
}
