package compile

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// TestTaskIDs: the IDs made as substrings of one string per class are
// spec.TaskID's, around every change in the number of digits.
func TestTaskIDs(t *testing.T) {
	for _, n := range []int{0, 1, 9, 10, 11, 99, 100, 101, 1001} {
		ids := taskIDs([]string{"kept"}, "app-1", "web", n)
		if len(ids) != n+1 || ids[0] != "kept" {
			t.Fatalf("n=%d: %d IDs after the kept one, or it is gone: %q", n, len(ids)-1, ids[:min(len(ids), 3)])
		}
		for k := range n {
			if want := spec.TaskID("app-1", "web", k); ids[k+1] != want {
				t.Fatalf("n=%d: ID %d is %q, want %q", n, k, ids[k+1], want)
			}
		}
	}
}

// TestScratchPut: scratch given back holds no task or address of the
// compile that used it (the tasks would keep specs and assignments alive
// in the pool), and the compiler no longer refers to it.
func TestScratchPut(t *testing.T) {
	sc := &scratch{}
	sc.used.reset(netip.MustParsePrefix("100.64.0.0/15")) // the map
	sc.used.add(netip.MustParseAddr("100.64.0.1"))
	c := &compiler{scratch: sc}
	c.tasks = sc.taskSlice(4)
	app := &app{name: "a"}
	c.tasks = append(c.tasks, task{id: "a/x/0", app: app, cur: &Assignment{Task: "a/x/0"}, reason: Reason{Chosen: "x", Rejected: []Rejection{{Server: "s"}}}})
	c.tasks = append(c.tasks, task{id: "a/x/1", app: app})
	c.tasks = c.tasks[:1] // a task beyond the length is cleared too
	sc.put(c)
	if c.tasks != nil || c.scratch != nil {
		t.Error("the compiler still refers to the scratch space")
	}
	if len(sc.used.m) != 0 || sc.used.bits != nil {
		t.Errorf("addresses not cleared: %d in the map, bits %v", len(sc.used.m), sc.used.bits != nil)
	}
	if len(sc.tasks) != 0 || cap(sc.tasks) < 4 {
		t.Errorf("tasks: len %d cap %d, want an empty list with its room kept", len(sc.tasks), cap(sc.tasks))
	}
	for i, tk := range sc.tasks[:cap(sc.tasks)] {
		if tk.id != "" || tk.app != nil || tk.cur != nil || tk.reason.Chosen != "" || tk.reason.Rejected != nil {
			t.Errorf("task %d not cleared: %+v", i, tk)
		}
	}
}

// TestCompileAfterLargerCompile: compiles that reuse the scratch space of
// a larger one (the same goroutine gets it back from the pool) give the
// plans of compiles that do not: a class scaled down and an app removed,
// their assignments still in Current (dropped), then the first input
// again.
func TestCompileAfterLargerCompile(t *testing.T) {
	big := sizedFleet(40, 6, 4)
	pBig, err := Compile(big)
	if err != nil {
		t.Fatal(err)
	}
	big.Current, big.Networks = assignments(pBig)
	small := big
	small.Apps = slices.Clone(big.Apps)
	small.Apps[2].Classes = slices.Clone(small.Apps[2].Classes)
	small.Apps[2].Classes[1].Tasks = 1
	small.Apps = append(small.Apps[:4], small.Apps[5:]...)
	// The expected plans, each from a compile whose scratch space is new.
	// (getScratch is swapped for it: no test of this package runs in
	// parallel with another.)
	want := func(in Input) []byte {
		t.Helper()
		sc := &scratch{}
		old := getScratch
		getScratch = func() *scratch { return sc }
		defer func() { getScratch = old }()
		p, err := Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(p)
		return b
	}
	wantBig, wantSmall := want(big), want(small)
	// The rounds share one scratch space, so that each compile certainly
	// gets the space the one before left (the pool may drop what it is
	// given, and does at random under the race detector).
	shared := &scratch{}
	old := getScratch
	getScratch = func() *scratch { return shared }
	defer func() { getScratch = old }()
	for i := range 4 {
		for _, tc := range []struct {
			in   Input
			want []byte
		}{{big, wantBig}, {small, wantSmall}} {
			p, err := Compile(tc.in)
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			if b, _ := json.Marshal(p); !bytes.Equal(b, tc.want) {
				t.Fatalf("round %d: plan differs from a compile with new scratch space: %s", i, firstDiff(b, tc.want))
			}
		}
	}
}

// TestTaskAddressesSkipLast: a task never gets its IPv4 network's last
// (broadcast) address, not even when Current gave it that address.
func TestTaskAddressesSkipLast(t *testing.T) {
	in := Input{Servers: fleet(3), Apps: []spec.App{{Name: "a", Network: "100.64.0.0/29", Classes: []spec.Class{{Name: "x", Tasks: 6,
		Resources: spec.Resources{CPU: 10, Memory: 1 << 20}}}}}}
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	in.Current, _ = assignments(p)
	last := netip.MustParseAddr("100.64.0.7")
	in.Current[5].Address = last
	for _, cur := range [][]Assignment{nil, in.Current} {
		in.Current = cur
		p, err := Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		for tk := range p.Tasks.All() {
			if tk.Address == last || tk.Address == netip.MustParseAddr("100.64.0.0") {
				t.Errorf("Current %v: task %s has address %s", cur != nil, tk.ID, tk.Address)
			}
		}
	}
}

// TestTaskByID: loadCurrent's lookup finds every task by its ID, and
// nothing for a string that is no task's ID, as a map from ID to task
// does.
func TestTaskByID(t *testing.T) {
	in := sizedFleet(20, 4, 10)
	c := &compiler{scratch: &scratch{}}
	if err := c.loadServers(in.Servers); err != nil {
		t.Fatal(err)
	}
	if err := c.loadApps(in.Apps); err != nil {
		t.Fatal(err)
	}
	byID := map[string]int32{}
	for i := range c.tasks {
		byID[c.tasks[i].id] = int32(i)
	}
	ids := []string{"", "/", "//", "app00", "app00/web", "app00/web/", "app00/web/07", "app00/web/+7", "app00/web/-1",
		"app00/web/ 1", "app00/web/1 ", "app00/web/999999", "app00/web/99999999999999999999", "app00/nope/1", "zzz/web/1",
		"app00/web/1/2", "app00//1", "/web/1", " app00/web/1", "app00/web/0x1", "app00/web/1e0"}
	for id := range byID {
		ids = append(ids, id)
	}
	if len(byID) < 20 {
		t.Fatalf("only %d tasks", len(byID))
	}
	// Each ID after every other (the cursor at every class, or none).
	for _, prev := range ids {
		for _, id := range ids {
			var last idCursor
			c.taskByID(prev, &last)
			want, wantOK := byID[id]
			got, ok := c.taskByID(id, &last)
			if ok != wantOK || got != want {
				t.Fatalf("taskByID(%q) after %q = %d, %v; want %d, %v", id, prev, got, ok, want, wantOK)
			}
		}
	}
}

// TestAddrSet: the set of taken addresses is a set, as a map is, in bit
// form (IPv4 networks of /16 to /32) and in map form (larger or IPv6
// ones), and reset empties it, for the same network too.
func TestAddrSet(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var s addrSet
	for round := range 3 {
		for _, p := range []string{"100.64.0.0/16", "100.64.7.0/24", "100.64.7.8/29", "100.64.7.8/30", "100.64.7.9/32",
			"100.64.0.0/15", "100.64.7.0/24", "fd00::/120", "100.127.255.0/24"} {
			pfx := netip.MustParsePrefix(p)
			s.reset(pfx)
			if bits := pfx.Addr().Is4() && pfx.Bits() >= 16; (s.bits != nil) != bits {
				t.Fatalf("%s: bits in use %v, want %v", p, s.bits != nil, bits)
			}
			want := map[netip.Addr]bool{}
			size := 1 << min(pfx.Addr().BitLen()-pfx.Bits(), 12)
			for range 3*size + 8 {
				a := pfx.Addr()
				for range r.IntN(size) {
					a = a.Next()
				}
				if got := s.has(a); got != want[a] {
					t.Fatalf("round %d, %s: has(%s) = %v, want %v", round, p, a, got, want[a])
				}
				if r.IntN(2) == 0 {
					s.add(a)
					want[a] = true
				}
			}
			if len(want) == 0 {
				t.Fatalf("%s: nothing added", p)
			}
		}
	}
}

// TestCurrentTwiceSideBySide: a task assigned twice in a Current long
// enough to be looked up in two halves side by side (loadCurrent) is
// reported as the one pair, whichever halves the two assignments are in
// and in whichever order, and an unknown task or server changes nothing.
func TestCurrentTwiceSideBySide(t *testing.T) {
	in := sizedFleet(60, 6, 1)
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	cur, _ := assignments(p)
	if len(cur) < 2*minSideBySide {
		t.Fatalf("only %d assignments: not split", len(cur))
	}
	orig := cur[3]
	dup := orig
	dup.Server = in.Servers[0].Name
	if dup.Server == orig.Server {
		dup.Server = in.Servers[1].Name
	}
	x, y := orig.Server, dup.Server
	if x > y {
		x, y = y, x
	}
	want := "current: task " + orig.Task + " is assigned twice (to " + x + " and to " + y + ")"
	for _, at := range []int{0, 4, len(cur) / 2, len(cur) - 1, len(cur)} {
		for _, swap := range []bool{false, true} {
			c := slices.Clone(cur)
			c = slices.Insert(c, at, dup)
			if swap { // the duplicate first, the original where it was put
				i := slices.IndexFunc(c, func(a Assignment) bool { return a == orig })
				j := slices.IndexFunc(c, func(a Assignment) bool { return a == dup })
				c[i], c[j] = c[j], c[i]
			}
			in.Current = c
			_, err := Compile(in)
			if err == nil || err.Error() != want {
				t.Fatalf("duplicate at %d (swap %v): error %v, want %q", at, swap, err, want)
			}
		}
	}
	// Assignments of no task, or to no server, are dropped or move the
	// task; the plan is the one the plain list gives.
	in.Current = slices.Clone(cur)
	base, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	extra := slices.Clone(cur)
	extra = slices.Insert(extra, len(extra)/2, Assignment{Task: "nope/web/1", Server: orig.Server, Address: orig.Address})
	extra[len(extra)-1].Server = "gone"
	in.Current = extra
	got, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	last := extra[len(extra)-1].Task
	gots, bases := got.Tasks.Flat(), base.Tasks.Flat()
	for i := range gots {
		g, b := gots[i], bases[i]
		if g.ID == last {
			if g.Reason.Kept || !strings.Contains(g.Reason.Chosen, "moved from gone (no longer a server)") {
				t.Fatalf("task %s on a server that is gone was kept: %+v", g.ID, g.Reason)
			}
			continue
		}
		if g.Server != b.Server || g.Address != b.Address {
			t.Fatalf("task %s: %s %s, want %s %s", g.ID, g.Server, g.Address, b.Server, b.Address)
		}
	}
}

// TestSideBySideSameAsInTurn: the steps that split a large fleet in two
// halves side by side (loading the tasks, finding Current's tasks and
// servers, assigning addresses) give the plan that one processor, doing
// them in turn, gives: a first compile, and a recompile through the cache
// after a class grew. (An address error of assignApps cannot be reached
// from input: allocateNetworks checks every network's room first.)
func TestSideBySideSameAsInTurn(t *testing.T) {
	in := sizedFleet(100, 6, 1)
	n := 0
	for _, a := range in.Apps {
		for _, cl := range a.Classes {
			n += cl.Tasks
		}
	}
	if n < 2*minSideBySide {
		t.Fatalf("%d tasks: too few to be split", n)
	}
	run := func(procs int, in Input, k *Cache) (*Plan, []byte) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
		p, err := k.Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		// The plan but its paths (they are made from the tasks and
		// their addresses, which are compared): their JSON is most of a
		// plan's and takes seconds.
		b, err := json.Marshal([]any{p.Tasks, p.Networks, p.Hosts, p.Pending, p.Paths.Len()})
		if err != nil {
			t.Fatal(err)
		}
		return p, b
	}
	var k1, k2 Cache
	p, one := run(1, in, &k1)
	_, two := run(2, in, &k2)
	if !bytes.Equal(one, two) {
		t.Fatalf("first compile: side by side differs from in turn: %s", firstDiff(two, one))
	}
	in.Current, in.Networks = assignments(p)
	in.Apps = slices.Clone(in.Apps)
	in.Apps[4].Classes = slices.Clone(in.Apps[4].Classes)
	in.Apps[4].Classes[1].Tasks += 3
	_, one = run(1, in, &k1)
	_, two = run(2, in, &k2)
	if !bytes.Equal(one, two) {
		t.Fatalf("recompile: side by side differs from in turn: %s", firstDiff(two, one))
	}
}
