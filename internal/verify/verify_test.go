package verify

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// fakeNet answers probes the way a correct data plane would for the given
// apps, with optional faults injected, so that verify's own logic is tested
// without a kernel.
type fakeNet struct {
	apps  []spec.App
	tasks map[string]compile.Task // by address
	byID  map[string]compile.Task
	// leak: class pairs whose encrypted traffic shows in plain.
	leak map[[2]string]bool
	// open: class pairs let through without a rule.
	open map[[2]string]bool
	// dropOnce: class pairs whose first probe per task pair and port times out
	// (a lost packet on a busy host).
	dropOnce map[[2]string]bool
	dropped  map[string]bool
	// refuseOnce: like dropOnce, but refused (a service not up yet).
	refuseOnce map[[2]string]bool
	// refuseUntil: class pairs refused until then (a program slow to
	// open its port after its task shows running).
	refuseUntil map[[2]string]time.Time
	// mute: classes whose guests cannot probe (VMs without a responder).
	mute map[string]bool
	// muteLeak: mute sources whose marker nonetheless crossed in plain.
	muteLeak bool
	// noWG: class pairs that connect without the marker in plain but
	// without WireGuard frames either (what a capture on the wrong
	// interface, or traffic on some other path, looks like).
	noWG map[[2]string]bool
	// cross: what a correct network lets through across apps,
	// "app/class>app/class:port" -> encrypted.
	cross map[string]bool
	mu    sync.Mutex
	calls int
}

func newFakeNet(apps []spec.App, tasks []compile.Task) *fakeNet {
	f := &fakeNet{apps: apps, tasks: map[string]compile.Task{}, byID: map[string]compile.Task{}, leak: map[[2]string]bool{}, open: map[[2]string]bool{},
		dropOnce: map[[2]string]bool{}, dropped: map[string]bool{}, mute: map[string]bool{}, refuseOnce: map[[2]string]bool{}, noWG: map[[2]string]bool{},
		refuseUntil: map[[2]string]time.Time{}}
	for _, t := range tasks {
		f.tasks[t.Address.String()] = t
		f.byID[t.ID] = t
	}
	return f
}

func (f *fakeNet) Probe(_ context.Context, server string, req api.ProbeRequest) (api.ProbeResult, error) {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	src, ok := f.byID[req.FromTask]
	if !ok || src.Server != server {
		return api.ProbeResult{}, fmt.Errorf("task %s is not on %s", req.FromTask, server)
	}
	dst := f.tasks[req.ToAddr]
	if f.mute[src.Class] {
		return api.ProbeResult{Skipped: "no probe responder", MarkerSeen: f.muteLeak && src.Server != dst.Server}, nil
	}
	if f.dropOnce[[2]string{src.Class, dst.Class}] && f.first(src, dst, req.Port) {
		return api.ProbeResult{TimedOut: true}, nil
	}
	allowed, enc := false, false
	if src.App == dst.App {
		for _, a := range f.apps {
			if a.Name != src.App {
				continue
			}
			for _, r := range a.Rules {
				if r.From == src.Class && r.To == dst.Class && protoOf(r.Protocol) == req.Network {
					for _, p := range r.Ports {
						allowed = allowed || p == req.Port
					}
				}
				if classPair(r.From, r.To) == classPair(src.Class, dst.Class) {
					enc = r.Encrypt
				}
			}
		}
	}
	if e, ok := f.cross[fmt.Sprintf("%s/%s>%s/%s:%d", src.App, src.Class, dst.App, dst.Class, req.Port)]; ok && src.App != dst.App {
		allowed, enc = true, e
	}
	if f.open[[2]string{src.Class, dst.Class}] {
		allowed = true
	}
	if !allowed {
		return api.ProbeResult{TimedOut: true}, nil
	}
	if f.refuseOnce[[2]string{src.Class, dst.Class}] && f.first(src, dst, req.Port) {
		return api.ProbeResult{Refused: true}, nil
	}
	if time.Now().Before(f.refuseUntil[[2]string{src.Class, dst.Class}]) {
		return api.ProbeResult{Refused: true}, nil
	}
	listens := false
	for _, a := range f.apps {
		for _, c := range a.Classes {
			if a.Name == dst.App && c.Name == dst.Class {
				for _, p := range c.Ports {
					listens = listens || p.Port == req.Port
				}
			}
		}
	}
	if !listens {
		return api.ProbeResult{Refused: true}, nil
	}
	remote := src.Server != dst.Server
	seen := remote && (!enc || f.leak[classPair(src.Class, dst.Class)])
	var wg uint64
	if remote && enc && !f.noWG[[2]string{src.Class, dst.Class}] {
		wg = 3
	}
	return api.ProbeResult{Connected: true, MarkerSeen: seen, RTT: time.Millisecond, WireGuardFrames: wg, PeerUnderlay: "198.18.0.9"}, nil
}

// first reports whether this is the first probe from src to dst:port, for
// the faults that hit only the first.
func (f *fakeNet) first(src, dst compile.Task, port int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := fmt.Sprintf("%s>%s:%d", src.ID, dst.ID, port)
	seen := f.dropped[k]
	f.dropped[k] = true
	return !seen
}

func shop() ([]spec.App, []compile.Task) {
	cls := func(name string, n, port int) spec.Class {
		return spec.Class{Name: name, Tasks: n, Ports: []spec.Port{{Port: port, Protocol: "tcp"}}}
	}
	apps := []spec.App{{
		Name:    "shop",
		Classes: []spec.Class{cls("web", 2, 80), cls("app", 2, 8080), cls("db", 1, 5432)},
		Rules: []spec.Rule{
			{From: "web", To: "app", Ports: []int{8080}, Encrypt: false},
			{From: "app", To: "db", Ports: []int{5432}, Encrypt: true},
		},
	}, {
		Name:    "blog",
		Classes: []spec.Class{cls("www", 1, 80)},
	}}
	t := func(id, server, addr string) compile.Task {
		parts := strings.Split(id, "/")
		return compile.Task{ID: id, App: parts[0], Class: parts[1], Server: server, Address: netip.MustParseAddr(addr)}
	}
	tasks := []compile.Task{
		t("shop/web/0", "s1", "100.64.0.1"), t("shop/web/1", "s2", "100.64.0.2"),
		t("shop/app/0", "s3", "100.64.0.3"), t("shop/app/1", "s1", "100.64.0.4"),
		t("shop/db/0", "s2", "100.64.0.5"),
		t("blog/www/0", "s1", "100.64.1.1"),
	}
	return apps, tasks
}

func TestRunPassesOnCorrectNetwork(t *testing.T) {
	apps, tasks := shop()
	f := newFakeNet(apps, tasks)
	rep, err := Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Checks {
		if !c.OK {
			t.Errorf("unexpected mismatch: %+v", c)
		}
	}
	if !rep.OK() || rep.Passed != len(rep.Checks) || f.calls != len(rep.Checks) {
		t.Fatalf("report %d/%d, calls %d", rep.Passed, len(rep.Checks), f.calls)
	}
	want := map[string]bool{}
	for _, c := range rep.Checks {
		want[c.FromClass+">"+c.ToClass+":"+c.Expect] = true
	}
	for _, k := range []string{"web>app:plain", "web>app:local", "app>db:encrypted", "web>db:denied", "db>app:denied", "app>web:denied", "app>app:denied", "www>web:denied", "web>www:denied"} {
		if !want[k] {
			t.Errorf("no check %s among %v", k, want)
		}
	}
}

func TestRunCatchesLeakAndHole(t *testing.T) {
	apps, tasks := shop()
	f := newFakeNet(apps, tasks)
	f.leak[classPair("app", "db")] = true
	f.open[[2]string{"web", "db"}] = true
	rep, err := Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var leak, hole bool
	for _, c := range rep.Checks {
		if c.OK {
			continue
		}
		switch {
		case c.FromClass == "app" && c.ToClass == "db" && c.Expect == Encrypted && c.Observed == Plain:
			leak = true
		case c.FromClass == "web" && c.ToClass == "db" && c.Expect == Denied:
			hole = true
		default:
			t.Errorf("unexpected mismatch %+v", c)
		}
	}
	if !leak || !hole || rep.OK() {
		t.Fatalf("leak %v hole %v ok %v", leak, hole, rep.OK())
	}
}

// A lost first probe on an allowed pair is retried once and passes; leaks
// are never retried, so a flaky leak cannot pass on a second try.
func TestRetryOnlyShortfalls(t *testing.T) {
	apps, tasks := shop()
	f := newFakeNet(apps, tasks)
	f.dropOnce[[2]string{"app", "db"}] = true
	rep, err := Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("a lost first packet failed the run: %+v", rep)
	}
	retried := 0
	for _, c := range rep.Checks {
		if c.Retried {
			retried++
			if c.FromClass != "app" || c.ToClass != "db" || !strings.Contains(c.Detail, "at first") {
				t.Errorf("unexpected retry %+v", c)
			}
		}
	}
	if retried == 0 || f.calls != len(rep.Checks)+retried {
		t.Fatalf("%d retried, %d calls for %d checks", retried, f.calls, len(rep.Checks))
	}

	// A service not listening yet at the first probe.
	f = newFakeNet(apps, tasks)
	f.refuseOnce[[2]string{"web", "app"}] = true
	rep, err = Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil || !rep.OK() {
		t.Fatalf("a service up late failed the run: %v %+v", err, rep)
	}

	f = newFakeNet(apps, tasks)
	f.leak[classPair("app", "db")] = true
	f.open[[2]string{"web", "db"}] = true
	rep, err = Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Checks {
		if c.Retried {
			t.Errorf("a leak was retried: %+v", c)
		}
	}
	if f.calls != len(rep.Checks) {
		t.Fatalf("%d calls for %d checks: leaks retried", f.calls, len(rep.Checks))
	}
}

func TestPlanErrors(t *testing.T) {
	apps, tasks := shop()
	if _, _, err := Plan("nope", apps, tasks, Options{}); err == nil {
		t.Fatal("unknown app accepted")
	}
	if _, _, err := Plan("shop", apps, nil, Options{}); err == nil {
		t.Fatal("app without tasks accepted")
	}
	if _, _, err := Plan("shop", apps, tasks, Options{MaxChecks: 3}); err == nil || !strings.Contains(err.Error(), "--max-checks") {
		t.Fatalf("limit not enforced: %v", err)
	}
}

// A probe that could not run proves nothing: incomplete, never a pass,
// and the run is not OK.
func TestProbeFailureIsIncomplete(t *testing.T) {
	apps, tasks := shop()
	rep, err := Run(context.Background(), failing{}, "shop", apps, tasks, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || rep.NoMismatch() || rep.Passed != 0 || rep.Incomplete != len(rep.Checks) {
		t.Fatalf("failed probes: passed %d incomplete %d of %d", rep.Passed, rep.Incomplete, len(rep.Checks))
	}
	for _, c := range rep.Checks {
		if c.OK || c.Observed != Incomplete || !c.Retried {
			t.Fatalf("a probe that could not run: %+v", c)
		}
	}
}

// "Encrypted" needs WireGuard frames between the two hosts as well as no
// marker in plain; connected without either is incomplete.
func TestEncryptedNeedsWireGuardFrames(t *testing.T) {
	apps, tasks := shop()
	f := newFakeNet(apps, tasks)
	f.noWG[[2]string{"app", "db"}] = true
	rep, err := Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range rep.Checks {
		if c.Expect == Encrypted {
			n++
			if c.OK || c.Observed != Incomplete || !strings.Contains(c.Detail, "no WireGuard frames") {
				t.Errorf("encrypted pair without WireGuard frames: %+v", c)
			}
		}
	}
	if n == 0 || rep.OK() || rep.Incomplete != n || rep.Failed != 0 {
		t.Fatalf("%d encrypted checks: passed %d failed %d incomplete %d", n, rep.Passed, rep.Failed, rep.Incomplete)
	}
}

type failing struct{}

func (failing) Probe(context.Context, string, api.ProbeRequest) (api.ProbeResult, error) {
	return api.ProbeResult{}, fmt.Errorf("agent unreachable")
}

// VM sources are probed like any other (their agent runs the probe inside
// the guest); one whose guest cannot probe is reported incomplete, with the
// agent's reason, never passed; and a marker its probe put on the wire in
// plain is reported as a leak even though the probe did not complete.
func TestVMSourcesProbedOrIncomplete(t *testing.T) {
	apps, tasks := shop()
	apps[0].Classes[2].Guest.Runtime = spec.RuntimeVM // db
	f := newFakeNet(apps, tasks)
	rep, err := Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Incomplete != 0 || rep.Passed != len(rep.Checks) || f.calls != len(rep.Checks) {
		t.Fatalf("passed %d incomplete %d of %d, %d probes", rep.Passed, rep.Incomplete, len(rep.Checks), f.calls)
	}

	f = newFakeNet(apps, tasks)
	f.mute["db"] = true
	rep, err = Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || !rep.NoMismatch() || rep.Incomplete == 0 || rep.Passed+rep.Incomplete != len(rep.Checks) {
		t.Fatalf("passed %d incomplete %d of %d, OK %v", rep.Passed, rep.Incomplete, len(rep.Checks), rep.OK())
	}
	if f.calls != len(rep.Checks)+rep.Incomplete {
		t.Fatalf("%d probes for %d checks, %d incomplete: incomplete checks are run once more", f.calls, len(rep.Checks), rep.Incomplete)
	}
	for _, c := range rep.Checks {
		if (c.FromClass == "db") != (c.Observed == Incomplete) {
			t.Errorf("check %s -> %s observed %s", c.FromTask, c.ToTask, c.Observed)
		}
		if c.Observed == Incomplete && (c.OK || c.Detail != "no probe responder") {
			t.Errorf("incomplete without the agent's reason, or counted ok: %+v", c)
		}
	}

	// The VM's marker crossed the underlay in plain while its port gave
	// no answer: a leak, reported as one.
	f = newFakeNet(apps, tasks)
	f.mute["db"], f.muteLeak = true, true
	rep, err = Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	leaks := 0
	for _, c := range rep.Checks {
		if c.FromClass == "db" && c.FromServer != c.ToServer {
			if c.Observed != Plain || c.OK && c.Expect != Plain {
				t.Errorf("plaintext from a VM that did not answer: %+v", c)
			}
			if !c.OK {
				leaks++
			}
		}
	}
	if leaks == 0 || rep.NoMismatch() {
		t.Fatalf("a planted plaintext probe from a VM was not reported: %d leaks, %+v", leaks, rep)
	}
}

// fakeFleet is a fleet as the API shows it, over a fakeNet.
type fakeFleet struct {
	*fakeNet
	apps  []spec.App
	tasks []compile.Task
	err   error
}

func (f fakeFleet) ListApps(context.Context) ([]api.App, error) {
	out := make([]api.App, len(f.apps))
	for i, a := range f.apps {
		out[i] = api.App{Name: a.Name, Spec: a}
	}
	return out, f.err
}

func (f fakeFleet) ListTasks(context.Context, api.Filter) ([]api.TaskInfo, error) {
	out := make([]api.TaskInfo, len(f.tasks))
	for i, t := range f.tasks {
		out[i] = api.TaskInfo{Task: t}
	}
	return out, nil
}

// TestRunFleetReadsTheFleet: RunFleet gives what Run gives on the apps and
// tasks the fleet lists, and stops on a failing read.
func TestRunFleetReadsTheFleet(t *testing.T) {
	apps, tasks := shop()
	ctx := context.Background()
	want, err := Run(ctx, newFakeNet(apps, tasks), "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	got, err := RunFleet(ctx, fakeFleet{fakeNet: newFakeNet(apps, tasks), apps: apps, tasks: tasks}, "shop", Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !got.OK() || len(got.Checks) != len(want.Checks) || got.Passed != want.Passed {
		t.Fatalf("RunFleet: %d/%d checks passed, Run: %d/%d", got.Passed, len(got.Checks), want.Passed, len(want.Checks))
	}
	boom := errors.New("server down")
	if _, err := RunFleet(ctx, fakeFleet{fakeNet: newFakeNet(apps, tasks), apps: apps, tasks: tasks, err: boom}, "shop", Options{}); !errors.Is(err, boom) {
		t.Fatalf("RunFleet with a failing ListApps: %v", err)
	}
}

// gatedNet holds each probe until as many are under way as the pools
// allow (or a short wait has passed), counting the peaks of denied probes
// and of the others.
type gatedNet struct {
	*fakeNet
	target int

	mu                   sync.Mutex
	denied, others       int
	peakDenied, peakRest int
}

func (g *gatedNet) Probe(ctx context.Context, server string, req api.ProbeRequest) (api.ProbeResult, error) {
	res, err := g.fakeNet.Probe(ctx, server, req)
	denied := res.TimedOut
	g.mu.Lock()
	if denied {
		g.denied++
	} else {
		g.others++
	}
	g.peakDenied, g.peakRest = max(g.peakDenied, g.denied), max(g.peakRest, g.others)
	g.mu.Unlock()
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		g.mu.Lock()
		full := g.denied+g.others >= g.target
		g.mu.Unlock()
		if full {
			break
		}
	}
	g.mu.Lock()
	if denied {
		g.denied--
	} else {
		g.others--
	}
	g.mu.Unlock()
	return res, err
}

func TestDeniedChecksRunInTheirOwnWiderPool(t *testing.T) {
	apps, tasks := shop()
	g := &gatedNet{fakeNet: newFakeNet(apps, tasks), target: 2 + 6}
	rep, err := Run(context.Background(), g, "shop", apps, tasks, Options{Timeout: time.Second, Parallel: 2, DeniedParallel: 6})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("report %d passed of %d", rep.Passed, len(rep.Checks))
	}
	if g.peakDenied != 6 || g.peakRest != 2 {
		t.Fatalf("at most %d denied and %d other probes at once, want 6 and 2", g.peakDenied, g.peakRest)
	}
}

// A service that opens its port a while after the first probes (a
// program of a small CPU request) passes once it does, within RetryFor;
// one that never opens fails once RetryFor has passed, not before.
func TestRetryShortfallsForAWhile(t *testing.T) {
	apps, tasks := shop()
	f := newFakeNet(apps, tasks)
	f.refuseUntil[[2]string{"web", "app"}] = time.Now().Add(1500 * time.Millisecond)
	rep, err := Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil || !rep.OK() {
		t.Fatalf("a service up 1.5 s late failed the run: %v, %d of %d passed", err, rep.Passed, len(rep.Checks))
	}
	for _, c := range rep.Checks {
		if c.FromClass == "web" && c.ToClass == "app" && c.Expect != Denied && (!c.Retried || !strings.Contains(c.Detail, "open at first")) {
			t.Errorf("check %+v: want retried, open at first", c)
		}
	}

	f = newFakeNet(apps, tasks)
	f.refuseUntil[[2]string{"web", "app"}] = time.Now().Add(time.Hour)
	start := time.Now()
	rep, _ = Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second, RetryFor: 600 * time.Millisecond})
	if rep.OK() {
		t.Fatal("a port never opened passed")
	}
	if d := time.Since(start); d < 600*time.Millisecond {
		t.Fatalf("gave up after %s, before RetryFor", d)
	}
}

// TestRetryStopsWhenCancelled: a run cancelled while it waits to retry
// returns at once and probes nothing more (a probe made with a cancelled
// context would be recorded as what the wire showed).
func TestRetryStopsWhenCancelled(t *testing.T) {
	apps, tasks := shop()
	f := newFakeNet(apps, tasks)
	f.refuseUntil[[2]string{"web", "app"}] = time.Now().Add(time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The run is cancelled while it waits before its second round of
	// retries (the first comes at once), and that wait never ends by
	// itself: only the cancellation ends it.
	atCancel, pauses := -1, 0
	old := retryPause
	retryPause = func(time.Duration) <-chan time.Time {
		pauses++
		if pauses > 1 {
			t.Fatalf("a pause after the run was cancelled")
		}
		f.mu.Lock()
		atCancel = f.calls
		f.mu.Unlock()
		cancel()
		return make(chan time.Time)
	}
	defer func() { retryPause = old }()
	rep, _ := Run(ctx, f, "shop", apps, tasks, Options{Timeout: time.Second, RetryFor: time.Hour})
	if rep != nil && rep.OK() {
		t.Fatal("a port never opened passed")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if atCancel < 0 || f.calls != atCancel {
		t.Fatalf("%d probes after the run was cancelled (at %d)", f.calls-atCancel, atCancel)
	}
}
