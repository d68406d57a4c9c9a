package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// moveAgent plays an agent for a make-before-break move: it runs every
// guest and staged copy its state names (but those of tasks in noStart),
// reports its state applied, and keeps every distinct state it was given.
type moveAgent struct {
	a *testAgent

	mu      sync.Mutex
	noStart map[string]bool
	seen    []hoststate.State
	seenAt  []time.Time // when each of seen was received
	lastRev int64
}

func (m *moveAgent) step(ctx context.Context) error {
	ds, err := m.a.c.Desired(ctx, m.a.name, 0, 0)
	if err != nil {
		return err
	}
	m.mu.Lock()
	if ds.Revision != m.lastRev {
		m.seen, m.lastRev = append(m.seen, ds.State), ds.Revision
		m.seenAt = append(m.seenAt, time.Now())
	}
	var tasks []api.TaskStatus
	for _, g := range slices.Concat(ds.State.Guests, ds.State.Staged) {
		if !m.noStart[g.Task] {
			tasks = append(tasks, api.TaskStatus{Task: g.Task, State: api.TaskRunning})
		}
	}
	m.mu.Unlock()
	return m.a.c.ReportStatus(ctx, m.a.name, api.Status{Name: m.a.name, AppliedRevision: ds.Revision, Tasks: tasks})
}

// firstAt is when the agent first received a state for which f holds
// (zero if never), and that state's index.
func (m *moveAgent) firstAt(f func(hoststate.State) bool) (time.Time, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, st := range m.seen {
		if f(st) {
			return m.seenAt[i], i
		}
	}
	return time.Time{}, -1
}

func (m *moveAgent) states() []hoststate.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.seen)
}

// moveFleet is a server with three move agents running and an app of two
// tasks of one class, on two of the three servers.
func moveFleet(t *testing.T, cfg Config, noStart ...string) (*testServer, map[string]*moveAgent) {
	t.Helper()
	return moveFleetWith(t, cfg, nil, noStart...)
}

// moveFleetWith is moveFleet, with before called on the server once it
// runs, before the agents join.
func moveFleetWith(t *testing.T, cfg Config, before func(*testServer), noStart ...string) (*testServer, map[string]*moveAgent) {
	t.Helper()
	ts := startServer(t, cfg)
	if before != nil {
		before(ts)
	}
	agents := map[string]*moveAgent{}
	ctx, cancel := context.WithCancel(bg)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i, n := range []string{"s1", "s2", "s3"} {
		m := &moveAgent{a: ts.join(t, n, i, map[string]string{"zone": "a"}), noStart: map[string]bool{}}
		for _, task := range noStart {
			m.noStart[task] = true
		}
		agents[n] = m
		wg.Go(func() {
			for ctx.Err() == nil {
				_ = m.step(ctx)
				sleepCtx(ctx, 20*time.Millisecond)
			}
		})
	}
	// The tasks reach each other: every host of the app routes to the
	// moving task.
	app := oneClassApp("mv", 2, "a") + "rules:\n  - {from: c, to: c, ports: [80], encrypt: true}\n"
	if _, err := ts.admin.ApplyApp(bg, []byte(app)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "two tasks placed and running", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{})
		running := 0
		for _, x := range tt {
			if x.Status != nil && x.Status.State == api.TaskRunning {
				running++
			}
		}
		return running == 2, fmt.Sprint(tt)
	})
	return ts, agents
}

// firstTask is the app's task of index 0 and its server.
func firstTask(t *testing.T, ts *testServer) (api.TaskInfo, string) {
	t.Helper()
	for _, x := range tasksOf(t, ts.admin, api.Filter{}) {
		if x.ID == "mv/c/0" {
			return x, x.Server
		}
	}
	t.Fatal("no task mv/c/0")
	return api.TaskInfo{}, ""
}

func eventActions(t *testing.T, ts *testServer, object string) []string {
	t.Helper()
	all, err := ts.admin.ListEvents(bg, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range all {
		if e.Object == object {
			out = append(out, e.Action)
		}
	}
	return out
}

// A drained server's task moves make-before-break: its new host runs a
// staged copy before any host routes to it there; then every host that
// routes to it holds it; then the others switch while the old host keeps
// its copy; then the old copy goes and the placement follows. Events say
// each step.
func TestMoveMakeBeforeBreak(t *testing.T) {
	t.Parallel()
	ts, agents := moveFleet(t, Config{MoveTimeout: time.Minute})
	moving, from := firstTask(t, ts)
	if _, err := ts.admin.DrainServer(bg, from, true); err != nil {
		t.Fatal(err)
	}
	var to string
	eventually(t, 20*time.Second, "the task on its new server", func() (bool, string) {
		for _, x := range tasksOf(t, ts.admin, api.Filter{}) {
			if x.ID == moving.ID && x.Server != from {
				to = x.Server
				return true, ""
			}
		}
		return false, "still on " + from
	})
	// Every phase's state, in order, on the new host: staged, then staged
	// and held, then a guest (routed), never a guest before it ran staged.
	var phases []string
	for _, st := range agents[to].states() {
		staged := slices.ContainsFunc(st.Staged, func(g hoststate.Guest) bool { return g.Task == moving.ID })
		guest := slices.ContainsFunc(st.Guests, func(g hoststate.Guest) bool { return g.Task == moving.ID })
		held := slices.Contains(st.Hold, moving.Address)
		p := ""
		switch {
		case staged && held:
			p = "held"
		case staged:
			p = "staged"
		case guest:
			p = "guest"
		}
		if (staged || held) && st.Schema != hoststate.SchemaMove {
			t.Errorf("a state of the move in schema %q", st.Schema)
		}
		if p != "" && (len(phases) == 0 || phases[len(phases)-1] != p) {
			phases = append(phases, p)
		}
	}
	// (Held there only when the new host routes to the task too: it has
	// no guest of the app here.)
	if len(phases) < 2 || phases[0] != "staged" || phases[len(phases)-1] != "guest" || slices.Index(phases, "guest") != len(phases)-1 {
		t.Errorf("the new host %s went through %v, want staged first, then guest", to, phases)
	}
	// The new host routed its copy (and applied that state: the agent
	// asks for the next state only after reporting this one) before any
	// other host was told to send to it there.
	routed, _ := agents[to].firstAt(func(st hoststate.State) bool {
		return slices.ContainsFunc(st.Guests, func(g hoststate.Guest) bool { return g.Task == moving.ID })
	})
	for name, m := range agents {
		if name == to || name == from {
			continue
		}
		sent, i := m.firstAt(func(st hoststate.State) bool {
			return slices.ContainsFunc(st.Routes, func(r hoststate.Route) bool { return r.Dest == moving.Address && r.Server == to })
		})
		if i < 0 {
			t.Fatalf("%s never routed %s to %s", name, moving.Address, to)
		}
		if routed.IsZero() || sent.Before(routed) {
			t.Errorf("%s was told to send %s to %s at %s, before %s routed its copy (%s)", name, moving.Address, to, sent.Format("15:04:05.000"), to, routed.Format("15:04:05.000"))
		}
	}
	// The old host held the task, and kept its copy until every other
	// host had switched: its last state with the task is a held one.
	var last hoststate.State
	for _, st := range agents[from].states() {
		if slices.ContainsFunc(st.Guests, func(g hoststate.Guest) bool { return g.Task == moving.ID }) {
			last = st
		}
	}
	if !slices.Contains(last.Hold, moving.Address) {
		t.Errorf("the old host's last state with the task does not hold it: %+v", last.Hold)
	}
	eventually(t, 10*time.Second, "the drained host without the task", func() (bool, string) {
		got := agents[from].states()
		return len(got[len(got)-1].Guests) == 0, fmt.Sprint(got[len(got)-1].Guests)
	})
	want := []string{EventTaskMoving, EventTaskHeld, EventTaskMoved, EventTaskStopped}
	eventually(t, 10*time.Second, "the move's events", func() (bool, string) {
		got := eventActions(t, ts, "task/"+moving.ID)
		return slices.Equal(got, want), fmt.Sprint(got)
	})
	if rec, err := ts.st.GetMove(bg); err != nil || rec != nil {
		t.Errorf("move record left: %+v, %v", rec, err)
	}
	for _, x := range tasksOf(t, ts.admin, api.Filter{}) {
		if x.ID == moving.ID && x.Address != moving.Address {
			t.Errorf("moved to address %s, was %s", x.Address, moving.Address)
		}
	}
}

// A copy that does not start on its new host within the move timeout
// ends the move the old way: the task moves in one step, and an event
// says why.
func TestMoveTimesOut(t *testing.T) {
	t.Parallel()
	ts, agents := moveFleet(t, Config{MoveTimeout: 500 * time.Millisecond})
	moving, from := firstTask(t, ts)
	for _, m := range agents {
		m.mu.Lock()
		m.noStart[moving.ID] = true
		m.mu.Unlock()
	}
	if _, err := ts.admin.DrainServer(bg, from, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "moved in one step", func() (bool, string) {
		got := eventActions(t, ts, "task/"+moving.ID)
		return slices.Equal(got, []string{EventTaskMoving, EventTaskMoveCut}), fmt.Sprint(got)
	})
	eventually(t, 10*time.Second, "the task on its new server", func() (bool, string) {
		for _, x := range tasksOf(t, ts.admin, api.Filter{}) {
			if x.ID == moving.ID {
				return x.Server != from, x.Server
			}
		}
		return false, "gone"
	})
}

// With MoveTimeout 0 (the default of a Config) tasks move in one step:
// no staged copy, no move events.
func TestMoveOffMovesInOneStep(t *testing.T) {
	t.Parallel()
	ts, agents := moveFleet(t, Config{})
	moving, from := firstTask(t, ts)
	if _, err := ts.admin.DrainServer(bg, from, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "moved", func() (bool, string) {
		for _, y := range tasksOf(t, ts.admin, api.Filter{}) {
			if y.ID == moving.ID {
				return y.Server != from, y.Server
			}
		}
		return false, ""
	})
	for n, m := range agents {
		for _, st := range m.states() {
			if len(st.Staged) > 0 || len(st.Hold) > 0 {
				t.Errorf("%s got a state of a move: %+v %v", n, st.Staged, st.Hold)
			}
		}
	}
	if got := eventActions(t, ts, "task/"+moving.ID); len(got) != 0 {
		t.Errorf("move events %v", got)
	}
}

// A move under way when the control plane stops resumes from its record
// when it starts again: the copy that starts later is switched to, and
// the move's events come once each.
func TestMoveResumesAfterRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ts, agents := moveFleet(t, Config{DataDir: dir, MoveTimeout: time.Minute})
	moving, from := firstTask(t, ts)
	for _, m := range agents {
		m.mu.Lock()
		m.noStart[moving.ID] = true // the copy does not start yet
		m.mu.Unlock()
	}
	if _, err := ts.admin.DrainServer(bg, from, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the move in phase stage", func() (bool, string) {
		rec, err := ts.st.GetMove(bg)
		return err == nil && rec != nil && rec.Phase == "stage", fmt.Sprint(rec, err)
	})
	addr := strings.TrimPrefix(ts.URL(), "https://")
	ts.stop()
	ts2 := startServer(t, Config{DataDir: dir, Listen: addr, MoveTimeout: time.Minute})
	for _, m := range agents {
		m.mu.Lock()
		delete(m.noStart, moving.ID)
		m.mu.Unlock()
	}
	want := []string{EventTaskMoving, EventTaskHeld, EventTaskMoved, EventTaskStopped}
	eventually(t, 30*time.Second, "the move done", func() (bool, string) {
		got := eventActions(t, ts2, "task/"+moving.ID)
		return slices.Equal(got, want), fmt.Sprint(got)
	})
	eventually(t, 10*time.Second, "the task off "+from, func() (bool, string) {
		for _, x := range tasksOf(t, ts2.admin, api.Filter{}) {
			if x.ID == moving.ID {
				return x.Server != from, x.Server
			}
		}
		return false, "gone"
	})
}

// A host the move does not concern (it runs nothing of the app and routes
// to none of its tasks) does not hold the move back, even one that never
// applies its state.
func TestMoveNotHeldBackByAnotherHost(t *testing.T) {
	t.Parallel()
	ts, _ := moveFleetWith(t, Config{MoveTimeout: time.Minute}, func(ts *testServer) {
		ts.join(t, "s9", 8, map[string]string{"zone": "z"}) // joins, never reports
	})
	moving, from := firstTask(t, ts)
	if _, err := ts.admin.DrainServer(bg, from, true); err != nil {
		t.Fatal(err)
	}
	want := []string{EventTaskMoving, EventTaskHeld, EventTaskMoved, EventTaskStopped}
	eventually(t, 30*time.Second, "the move done", func() (bool, string) {
		got := eventActions(t, ts, "task/"+moving.ID)
		return slices.Equal(got, want), fmt.Sprint(got)
	})
}
