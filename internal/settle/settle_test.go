package settle

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// fakeFleet answers the API client's list calls from its fields, which a
// test changes between looks (step runs before each look).
type fakeFleet struct {
	mu      sync.Mutex
	apps    []api.App
	servers []api.Server
	tasks   []api.TaskInfo
	paths   []api.PathInfo
	failing error // every call fails with it while set
	looks   int
	step    func(f *fakeFleet, look int)
}

func (f *fakeFleet) ListApps(context.Context) ([]api.App, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.looks++
	if f.step != nil {
		f.step(f, f.looks)
	}
	return f.apps, f.failing
}

func (f *fakeFleet) ListServers(context.Context) ([]api.Server, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.servers, f.failing
}

func (f *fakeFleet) ListTasks(context.Context, api.Filter) ([]api.TaskInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tasks, f.failing
}

func (f *fakeFleet) ListPaths(context.Context, api.Filter) ([]api.PathInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paths, f.failing
}

func app(name string, classes map[string]int) api.App {
	a := api.App{Name: name, Spec: spec.App{Name: name}}
	for c, n := range classes {
		a.Spec.Classes = append(a.Spec.Classes, spec.Class{Name: c, Tasks: n})
	}
	return a
}

func task(id, server, state, msg string) api.TaskInfo {
	parts := strings.Split(id, "/")
	ti := api.TaskInfo{Task: compile.Task{ID: id, App: parts[0], Class: parts[1], Server: server}}
	if state != "" {
		ti.Status = &api.TaskStatus{Task: id, State: state, Message: msg}
	}
	return ti
}

func server(name string, desired, applied int64, errs ...string) api.Server {
	return api.Server{Spec: spec.Server{Name: name}, State: "ready", DesiredRevision: desired, AppliedRevision: applied, Errors: errs}
}

func path(app, from, to, fromServer, toServer string, encrypt bool, age float64) api.PathInfo {
	return api.PathInfo{
		Path:         compile.Path{App: app, From: from, To: to, FromServer: fromServer, ToServer: toServer, Encrypt: encrypt, Local: fromServer == toServer},
		HandshakeAge: age,
	}
}

// settled is a shop of web/0 on s1 and db/0 on s2, web -> db encrypted,
// every part of it settled.
func settled() *fakeFleet {
	return &fakeFleet{
		apps:    []api.App{app("shop", map[string]int{"web": 1, "db": 1})},
		servers: []api.Server{server("s1", 3, 3), server("s2", 4, 4)},
		tasks:   []api.TaskInfo{task("shop/web/0", "s1", api.TaskRunning, ""), task("shop/db/0", "s2", api.TaskRunning, "")},
		paths:   []api.PathInfo{path("shop", "shop/web/0", "shop/db/0", "s1", "s2", true, 1.5)},
	}
}

func TestSettledAtOnce(t *testing.T) {
	f := settled()
	var seen []State
	st, err := Wait(context.Background(), f, Options{Progress: func(s State) { seen = append(seen, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if f.looks != 1 || len(st.Tasks) != 2 || !st.Settled() {
		t.Fatalf("looks %d, state %+v", f.looks, st)
	}
	if got, want := st.Summary(), "2/2 tasks running, 2/2 hosts applied their state, 1/1 encrypted paths handshaken"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
	if len(seen) != 1 || !seen[0].Settled() {
		t.Errorf("progress calls: %+v", seen)
	}
}

// Each part settles in turn: the wait returns only after the last, and
// reports each new state once.
func TestWaitsForEachPart(t *testing.T) {
	f := settled()
	f.tasks = []api.TaskInfo{task("shop/web/0", "s1", api.TaskStarting, "")}
	f.servers[1].AppliedRevision = 2
	f.paths[0].HandshakeAge = -1
	f.step = func(f *fakeFleet, look int) {
		switch look {
		case 3: // db placed, web runs
			f.tasks = []api.TaskInfo{task("shop/web/0", "s1", api.TaskRunning, ""), task("shop/db/0", "s2", "", "")}
		case 5:
			f.tasks[1] = task("shop/db/0", "s2", api.TaskRunning, "")
		case 7:
			f.servers[1].AppliedRevision = 4
		case 9:
			f.paths[0].HandshakeAge = 0.2
		}
	}
	var seen []string
	st, err := Wait(context.Background(), f, Options{Interval: time.Millisecond, Progress: func(s State) {
		seen = append(seen, s.Summary())
	}})
	if err != nil {
		t.Fatal(err)
	}
	if f.looks != 9 || !st.Settled() {
		t.Fatalf("settled after %d looks (want 9): %+v", f.looks, st)
	}
	want := []string{
		"0/2 tasks running, 1/2 hosts applied their state, 0/1 encrypted paths handshaken",
		"1/2 tasks running, 1/2 hosts applied their state, 0/1 encrypted paths handshaken",
		"2/2 tasks running, 1/2 hosts applied their state, 0/1 encrypted paths handshaken",
		"2/2 tasks running, 2/2 hosts applied their state, 0/1 encrypted paths handshaken",
		"2/2 tasks running, 2/2 hosts applied their state, 1/1 encrypted paths handshaken",
	}
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Errorf("progress:\n%s\nwant:\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
}

// On timeout the error names everything still unsettled, and wraps the
// context's error.
func TestTimeoutSaysWhatIsUnsettled(t *testing.T) {
	f := settled()
	f.apps[0] = app("shop", map[string]int{"web": 2, "db": 1})
	f.tasks[1] = task("shop/db/0", "s2", api.TaskFailed, "exec: no such file")
	f.servers = append(f.servers, server("s3", 0, 0), server("s4", 5, 5, "nft: no such table"))
	f.servers[0].State, f.servers[0].AppliedRevision = "down", 2
	f.paths[0].HandshakeAge = -1
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var last State
	st, err := Wait(ctx, f, Options{Interval: 5 * time.Millisecond, Progress: func(s State) { last = s }})
	var nse *NotSettledError
	if !errors.As(err, &nse) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v (%T), want a *NotSettledError wrapping the deadline", err, err)
	}
	want := []string{
		"path shop/web/0 -> shop/db/0: no WireGuard handshake yet between s1 and s2",
		"server s1 (down): applied revision 2 of 3",
		"server s3 (ready): no desired state yet",
		"server s4: applied revision 5 with errors: nft: no such table",
		"task shop/db/0 on s2: failed (exec: no such file)",
		"task shop/web/1: not placed yet",
	}
	if strings.Join(st.Unsettled, "\n") != strings.Join(want, "\n") {
		t.Errorf("unsettled:\n%s\nwant:\n%s", strings.Join(st.Unsettled, "\n"), strings.Join(want, "\n"))
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "not settled (1/3 tasks running, 1/4 hosts applied their state, 0/1 encrypted paths handshaken)") {
		t.Errorf("error: %s", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, "\n  "+w) {
			t.Errorf("error lacks %q:\n%s", w, msg)
		}
	}
	if last.Summary() != st.Summary() {
		t.Errorf("last progress %q, want the final state %q", last.Summary(), st.Summary())
	}
}

// Apps limits tasks and paths; servers are always all but removed ones.
func TestScope(t *testing.T) {
	f := settled()
	f.apps = append(f.apps, app("blog", map[string]int{"www": 1}))
	f.tasks = append(f.tasks, task("blog/www/0", "s1", api.TaskStarting, ""), task("gone/x/0", "s2", api.TaskRunning, ""))
	f.paths = append(f.paths, path("blog", "blog/www/0", "blog/www/1", "s1", "s2", true, -1))
	f.servers = append(f.servers, api.Server{Spec: spec.Server{Name: "s9"}, State: api.ServerRevoked})

	st := Check(context.Background(), f, Options{Apps: []string{"shop"}})
	if !st.Settled() || st.Servers != 2 || len(st.Tasks) != 2 {
		t.Errorf("shop alone: %+v", st)
	}
	// An app deleted, whose task is still placed, is not settled.
	st = Check(context.Background(), f, Options{Apps: []string{"gone"}})
	if st.Settled() || st.Want != 0 || st.Unsettled[0] != "task gone/x/0: placed, but its app no longer asks for it" {
		t.Errorf("deleted app: %+v", st)
	}
	st = Check(context.Background(), f, Options{})
	if st.Settled() || len(st.Unsettled) != 3 {
		t.Errorf("whole fleet: %q", st.Unsettled)
	}
	// Without handshakes, the blog path is not waited for.
	st = Check(context.Background(), f, Options{Apps: []string{"blog"}, NoHandshakes: true})
	if fmt.Sprint(st.Unsettled) != "[task blog/www/0 on s1: starting]" || st.Encrypted != 0 {
		t.Errorf("blog without handshakes: %q", st.Unsettled)
	}
}

// A failed call is one unsettled look, tried again.
func TestRetriesFailedCalls(t *testing.T) {
	f := settled()
	f.failing = errors.New("connection refused")
	f.step = func(f *fakeFleet, look int) {
		if look == 3 {
			f.failing = nil
		}
	}
	var seen []State
	st, err := Wait(context.Background(), f, Options{Interval: time.Millisecond, Progress: func(s State) { seen = append(seen, s) }})
	if err != nil || !st.Settled() || f.looks != 3 {
		t.Fatalf("err %v, looks %d, state %+v", err, f.looks, st)
	}
	if len(seen) == 0 || fmt.Sprint(seen[0].Unsettled) != "[list apps: connection refused]" {
		t.Errorf("first progress: %+v", seen)
	}
}

// A server that is down and holds no task is not waited for: its tasks
// were placed elsewhere, and those are. One that still holds a task (TestTimeoutSaysWhatIsUnsettled) is.
func TestDownServerIsNotWaitedFor(t *testing.T) {
	f := settled()
	f.servers = append(f.servers, api.Server{Spec: spec.Server{Name: "s3"}, State: spec.ServerDown, DesiredRevision: 9, AppliedRevision: 5})
	st := Check(context.Background(), f, Options{})
	if !st.Settled() || st.Servers != 2 {
		t.Errorf("with s3 down: %+v", st)
	}
	f.servers[2].State = "ready"
	if st := Check(context.Background(), f, Options{}); st.Settled() {
		t.Errorf("s3 ready but behind is settled: %+v", st)
	}
}

// A pending task (no server can take it) is not waited for: once the rest
// has settled, Wait returns at once with a *PendingError naming it and
// why; a task still starting is waited for first.
func TestPendingIsReportedNotWaitedFor(t *testing.T) {
	f := settled()
	f.apps = []api.App{app("shop", map[string]int{"web": 1, "db": 2})}
	pend := task("shop/db/1", "", "", "")
	pend.Pending = "no server fits: needs cpu 2000m, memory 64Mi; the closest, s2, has cpu 1000m, memory 1Gi free (short cpu 1000m)"
	f.tasks = append(f.tasks, pend)
	f.tasks[0].Status.State = api.TaskStarting
	f.step = func(f *fakeFleet, look int) {
		if look == 3 {
			f.tasks[0].Status.State = api.TaskRunning
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := Wait(ctx, f, Options{Interval: time.Millisecond})
	var pe *PendingError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want a *PendingError", err)
	}
	if f.looks != 3 || ctx.Err() != nil || len(st.Pending) != 1 || st.Pending[0].ID != "shop/db/1" || st.Running != 2 || st.Want != 3 {
		t.Fatalf("looks %d, state %+v", f.looks, st)
	}
	if msg := err.Error(); !strings.Contains(msg, "task shop/db/1: no server fits") || !strings.Contains(msg, "1 tasks pending") {
		t.Errorf("error %q does not name the pending task and why", msg)
	}
}

// Paths listed by server pair count for every path each stands for: the
// counts, and the unsettled line, say how many paths wait.
func TestServerPairCounts(t *testing.T) {
	f := settled()
	done := path("shop", "shop/web/0", "shop/db/0", "s1", "s2", true, 1.5)
	done.Count = 250
	waiting := path("shop", "shop/web/1", "shop/db/0", "s3", "s2", true, -1)
	waiting.Count = 40
	f.paths = []api.PathInfo{done, waiting}
	st := Check(context.Background(), f, Options{})
	if st.Encrypted != 290 || st.Handshaken != 250 {
		t.Fatalf("encrypted %d, handshaken %d; want 290 and 250", st.Encrypted, st.Handshaken)
	}
	if len(st.Unsettled) != 1 || !strings.Contains(st.Unsettled[0], "40 paths of shop") || !strings.Contains(st.Unsettled[0], "between s3 and s2") {
		t.Fatalf("unsettled: %q", st.Unsettled)
	}
}
