package compile

import (
	"slices"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// A task on a draining server moves (keeping its address), and says so;
// one on a ready server stays.
func TestDrainingServerTasksMove(t *testing.T) {
	in, p := drainFixture(t)
	drained := p.Tasks.Flat()[0]
	q, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	before := p.Tasks.Flat()
	for i, tk := range q.Tasks.Flat() {
		was := before[i]
		switch {
		case tk.ID == drained.ID:
			if tk.Server == drained.Server || tk.Address != drained.Address || !strings.Contains(tk.Reason.Chosen, "moved from "+drained.Server+" (draining)") {
				t.Errorf("drained task: %+v, was on %s at %s", tk, drained.Server, drained.Address)
			}
		case tk.Server != was.Server || !tk.Reason.Kept:
			t.Errorf("%s moved from %s to %s: only the drained server's tasks move", tk.ID, was.Server, tk.Server)
		}
	}
	for _, hs := range q.Hosts {
		if hs.Host == drained.Server && len(hs.Guests) != 0 {
			t.Errorf("the draining server still has guests: %+v", hs.Guests)
		}
	}
}

// With Keep, a draining server keeps its tasks (the fleet before a
// make-before-break move): the plan is the one before the drain, host for
// host, but for the draining server taking no new task.
func TestKeepDrainingServer(t *testing.T) {
	in, p := drainFixture(t)
	drained := p.Tasks.Flat()[0].Server
	in.Keep = []string{drained}
	q, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	before := p.Tasks.Flat()
	for i, tk := range q.Tasks.Flat() {
		if tk.Server != before[i].Server {
			t.Errorf("%s moved from %s to %s although its server is kept", tk.ID, before[i].Server, tk.Server)
		}
	}
	for i, hs := range q.Hosts {
		if !slices.EqualFunc(hs.Guests, p.Hosts[i].Guests, func(a, b Guest) bool { return a.Task == b.Task }) {
			t.Errorf("%s: guests %v, want those before the drain", hs.Host, hs.Guests)
		}
	}
	// A new task does not land on it.
	in.Apps[0].Classes[0].Tasks = 3
	r, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if r.Tasks.Flat()[2].Server == drained {
		t.Errorf("a new task was placed on the kept draining server %s", drained)
	}
}

// drainFixture is two tasks placed on a fleet of three (p, the plan), and
// the input of the next compile: the same placement, the server of the
// first task draining.
func drainFixture(t *testing.T) (Input, *Plan) {
	t.Helper()
	in := Input{Servers: fleet(3), Apps: []spec.App{{Name: "a", Classes: []spec.Class{{Name: "x", Tasks: 2,
		Resources: spec.Resources{CPU: 100, Memory: 1 << 20}}}}}}
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	for tk := range p.Tasks.All() {
		in.Current = append(in.Current, Assignment{Task: tk.ID, Server: tk.Server, Address: tk.Address})
	}
	for i := range in.Servers {
		if in.Servers[i].Name == p.Tasks.Flat()[0].Server {
			in.Servers[i].State = spec.ServerDraining
		}
	}
	return in, p
}
