package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

// BenchmarkLongPollFanout: one real server (embedded etcd), N simulated
// hosts long-polling their desired state over HTTPS with mTLS. Each
// iteration applies a change that touches every host (an app with one task
// per host whose command changes) and measures the time until every host
// has received its new revision, and until every host has acknowledged it
// (a status report saying it applied that revision, as a real agent sends
// after applying). Reported: fanout-ms (apply sent to last host served),
// ack-ms (to last acknowledgement accepted), apply-ms (the apply call
// alone), join-s (all N hosts joining, 16 at a time, before the timer
// starts), heap-MB and goroutines of this process with all hosts parked.
//
// The sizes are 10, 100 and 1,000 hosts; CORRIDOR_BENCH_HOSTS replaces
// them with a comma-separated list, e.g. CORRIDOR_BENCH_HOSTS=10000. The
// simulated hosts live in this process when it may open two descriptors per
// host (both ends of each connection); otherwise they move to a child
// process (this test binary again, see TestFanoutFleetHelper), heap-MB and
// goroutines then count the server alone and agents-heap-MB and
// agents-goroutines the child.
func BenchmarkLongPollFanout(b *testing.B) {
	sizes, err := benchHosts(os.Getenv("CORRIDOR_BENCH_HOSTS"))
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) { benchFanout(b, n) })
	}
}

// benchHosts parses CORRIDOR_BENCH_HOSTS; empty means the default sizes.
func benchHosts(v string) ([]int, error) {
	if strings.TrimSpace(v) == "" {
		return []int{10, 100, 1000}, nil
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > spec.MaxAppTasks {
			// One task per host, in one app.
			return nil, fmt.Errorf("CORRIDOR_BENCH_HOSTS: %q is not a host count from 1 to %d", f, spec.MaxAppTasks)
		}
		out = append(out, n)
	}
	return out, nil
}

// fileLimit raises the open-file limit towards need as far as the hard
// limit allows (an unprivileged process may not raise the hard limit;
// Go already lifts the soft one at start) and returns the limit now.
func fileLimit(need uint64) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur >= need {
		return lim.Cur
	}
	want := syscall.Rlimit{Cur: need, Max: max(lim.Max, need)}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
		return need
	}
	return lim.Cur
}

// fdSlack is the descriptors beside the hosts' connections: etcd's files
// and sockets, joins in flight and their closing connections.
const fdSlack = 4096

func benchFanout(b *testing.B, n int) {
	var fl fanoutFleet
	// CORRIDOR_BENCH_SPLIT=1 puts the hosts in a child process whatever
	// the limit, so that rss-MB is the server's alone.
	split := fileLimit(uint64(2*n+fdSlack)) < uint64(2*n+fdSlack) || os.Getenv("CORRIDOR_BENCH_SPLIT") == "1"
	if split && fileLimit(uint64(n+fdSlack)) < uint64(n+fdSlack) {
		b.Fatalf("%d hosts need %d open files in the server process; the limit is %d (raise ulimit -n)", n, n+fdSlack, fileLimit(0))
	}
	ts := startServer(b, Config{HeartbeatTimeout: time.Hour})
	joinStart := time.Now()
	if split {
		b.Logf("open-file limit %d is short of %d: the %d simulated hosts run in a child process", fileLimit(0), 2*n+fdSlack, n)
		rf, err := startRemoteFleet(ts, n, b.Logf)
		if err != nil {
			b.Fatal(err)
		}
		fl = rf
	} else {
		agents, err := joinFleet(context.Background(), ts.URL(), ts.CACert(), ts.JoinToken(), n, b.Logf)
		if err != nil {
			b.Fatal(err)
		}
		fl = startFleet(agents)
	}
	joinTime := time.Since(joinStart)
	defer func() {
		ts.hub.close() // answers the parked polls at once
		fl.stop()
	}()

	// Generous bounds for a loaded machine: they catch a stuck run, they
	// do not measure.
	bound := 60*time.Second + time.Duration(n)*10*time.Millisecond
	parkAll := func() {
		deadline := time.Now().Add(bound)
		for ts.hub.parked.Load() < int64(n) {
			if time.Now().After(deadline) {
				b.Fatalf("only %d of %d hosts parked", ts.hub.parked.Load(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// A first app so that later iterations are updates, like a rollout,
	// held by every host before the timer starts: the controller's first
	// placement of n new tasks (every server looked at for each task) is
	// not part of a change's fan-out. Placing 10,000 new tasks on a loaded
	// machine may outlast the client's 30 s: the apply is idempotent, so
	// a timed-out one is sent again (the next answers "unchanged" once the
	// first landed).
	const firstGen = 1 << 20
	if err := fl.arm(firstGen); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(bound); ; {
		_, err := ts.admin.ApplyApp(bg, []byte(fanoutApp(n, firstGen)))
		if err == nil {
			break
		}
		if !errors.Is(err, context.DeadlineExceeded) || time.Now().After(deadline) {
			b.Fatal(err)
		}
		b.Logf("first apply: %v; sending it again", err)
	}
	// The first app places n new tasks, each looking at every server,
	// twice (the apply's dry run and the controller): on a loaded machine
	// that alone may take minutes at 10,000 hosts.
	for _, stage := range []string{fleetGot, fleetAcked} {
		if err := fl.wait(stage, 3*bound); err != nil {
			b.Fatalf("first app: %v", err)
		}
	}
	// The controller writes an app's placement after the hosts' desired
	// states: at 10,000 tasks (a record of megabytes) the hosts may have
	// acknowledged before it is stored. A timed apply whose dry run read
	// the state before that would place every task afresh (10,000 x
	// 10,000 servers looked at), a cost of the previous change's tail,
	// not of this one.
	for deadline := time.Now().Add(bound); ; {
		sn, err := ts.st.Snapshot(bg)
		if err != nil {
			b.Fatal(err)
		}
		placed := 0
		for _, p := range sn.Placement {
			if p.App == "fanout" {
				placed = len(p.Tasks)
			}
		}
		if placed == n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("first app: %d of %d tasks in the stored placement", placed, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// CORRIDOR_BENCH_CPUPROFILE=file profiles this process during the
	// timed part only (the joins and the first apply left out).
	if path := os.Getenv("CORRIDOR_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	// CORRIDOR_BENCH_MEMPROFILE=prefix writes this process's allocation
	// profile before (prefix.before) and after (prefix.after) the timed
	// part: go tool pprof -sample_index=alloc_space -base prefix.before
	// <test binary> prefix.after shows what the timed part allocated.
	memProfile := func(suffix string) {
		prefix := os.Getenv("CORRIDOR_BENCH_MEMPROFILE")
		if prefix == "" {
			return
		}
		f, err := os.Create(prefix + "." + suffix)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
	}
	memProfile("before")
	defer memProfile("after")
	var fanout, ack, apply, cpu, agentsCPU time.Duration
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		b.StopTimer()
		// Wait for the previous generation to settle everywhere.
		time.Sleep(200 * time.Millisecond)
		parkAll()
		if err := fl.arm(int64(i)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		cpu0, acpu0 := processCPU(), fleetCPU(fl)
		start := time.Now()
		if _, err := ts.admin.ApplyApp(bg, []byte(fanoutApp(n, i))); err != nil {
			b.Fatal(err)
		}
		apply += time.Since(start)
		if err := fl.wait(fleetGot, bound); err != nil {
			b.Fatal(err)
		}
		fanout += time.Since(start)
		if err := fl.wait(fleetAcked, bound); err != nil {
			b.Fatal(err)
		}
		ack += time.Since(start)
		cpu += processCPU() - cpu0
		agentsCPU += fleetCPU(fl) - acpu0
	}
	b.StopTimer()
	parkAll()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(fanout.Milliseconds())/float64(b.N), "fanout-ms")
	b.ReportMetric(float64(ack.Milliseconds())/float64(b.N), "ack-ms")
	b.ReportMetric(float64(apply.Milliseconds())/float64(b.N), "apply-ms")
	// CPU time of this process from the apply to the last acknowledgement:
	// with the hosts in a child process (CORRIDOR_BENCH_SPLIT=1), the
	// server's and its embedded etcd's alone. Unlike the wall times it
	// hardly depends on what else the machine runs; per host it is the
	// figure docs/scale.md builds on.
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N)/float64(n), "cpu-us/host")
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MB")
	b.ReportMetric(float64(runtime.NumGoroutine()), "goroutines")
	b.ReportMetric(joinTime.Seconds(), "join-s")
	if kb := peakRSSKB(); kb > 0 {
		// The process's peak resident size: the server's alone when the
		// hosts run in a child process.
		b.ReportMetric(float64(kb)/1024, "peak-rss-MB")
	}
	if rf, ok := fl.(*remoteFleet); ok {
		heap, gr, err := rf.stats(bound)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(heap, "agents-heap-MB")
		// The simulated hosts' CPU over the same span: on one machine
		// they compete with the server for the cores, so the wall times
		// are about (server CPU + this) / cores at best.
		b.ReportMetric(float64(agentsCPU.Microseconds())/float64(b.N)/float64(n), "agents-cpu-us/host")
		b.ReportMetric(float64(gr), "agents-goroutines")
	}
}

// processCPU is the CPU time (user and system, all threads) this process
// used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fleetCPU is the CPU time the simulated hosts' child process used so far
// (0 for hosts in this process, whose CPU processCPU counts), from
// /proc/<pid>/stat (utime and stime, in USER_HZ ticks of 10 ms).
func fleetCPU(fl fanoutFleet) time.Duration {
	rf, ok := fl.(*remoteFleet)
	if !ok || rf.cmd.Process == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", rf.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces: fields count from after its ')'.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// peakRSSKB is this process's peak resident set size (VmHWM), 0 if
// unknown.
func peakRSSKB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

// joinFleet joins n hosts, 16 at a time, retrying what a real agent
// retries (connection errors, timeouts, 408, 429 and 5xx) with backoff.
// It runs on any goroutine: failures come back as an error naming the
// first one that was not retried (or outlived the retries) and how many
// hosts failed.
func joinFleet(ctx context.Context, url string, caPEM []byte, token string, n int, logf func(string, ...any)) ([]*testAgent, error) {
	agents := make([]*testAgent, n)
	var (
		wg       sync.WaitGroup
		next     atomic.Int64
		mu       sync.Mutex
		firstErr error
		failed   int
		retried  = map[string]int{} // transient failures by message, for the log
	)
	// A bound that catches a stuck run, not a measure: 10,000 hosts
	// joining on a loaded 2-core machine may take more than 10 minutes.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute+time.Duration(n)*100*time.Millisecond)
	defer cancel()
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				name := fmt.Sprintf("h%04d", i)
				delay := 50 * time.Millisecond
				for {
					a, err := joinAt(ctx, url, caPEM, token, name, i, nil)
					if err == nil {
						agents[i] = a
						break
					}
					transient := joinRetryable(err) && ctx.Err() == nil
					mu.Lock()
					if transient {
						retried[trimErr(err)]++
					} else {
						failed++
						if firstErr == nil {
							firstErr = err
						}
					}
					mu.Unlock()
					if !transient {
						break
					}
					sleepCtx(ctx, delay/2+time.Duration(rand.Int64N(int64(delay/2))))
					delay = min(2*delay, 5*time.Second)
				}
			}
		}()
	}
	wg.Wait()
	for msg, k := range retried {
		logf("join retried %d times after: %s", k, msg)
	}
	if firstErr != nil {
		return nil, fmt.Errorf("%d of %d hosts failed to join; first error: %w", failed, n, firstErr)
	}
	return agents, nil
}

// joinRetryable is the agent's rule (agent.permanent): the server's own
// refusals (4xx but 408 and 429) are final, everything else may pass.
func joinRetryable(err error) bool {
	code := api.HTTPStatus(err)
	return code == 0 || code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests
}

// trimErr drops the host's name so that like failures count together.
func trimErr(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, ": "); strings.HasPrefix(msg, "join h") && i > 0 {
		msg = msg[i+2:]
	}
	return msg
}

// fanoutFleet is the simulated hosts, in this process or in a child.
type fanoutFleet interface {
	// arm makes gen the generation the hosts wait for, and clears counts.
	arm(gen int64) error
	// wait returns once every host reached stage for the armed generation.
	wait(stage string, bound time.Duration) error
	stop()
}

// Stages a host passes for a generation.
const (
	fleetGot   = "got"
	fleetAcked = "acked"
)

// localFleet is the simulated hosts in this process: each long-polls in a loop
// and acknowledges the armed generation once it gets it.
type localFleet struct {
	n               int
	target          atomic.Int64
	got, acked      atomic.Int64
	allGot, allAckd chan struct{}
	cancel          context.CancelFunc
	loops           sync.WaitGroup
}

func startFleet(agents []*testAgent) *localFleet {
	ctx, cancel := context.WithCancel(context.Background())
	f := &localFleet{n: len(agents), cancel: cancel, allGot: make(chan struct{}, 1), allAckd: make(chan struct{}, 1)}
	for _, a := range agents {
		f.loops.Add(1)
		go f.poll(ctx, a)
	}
	return f
}

func (f *localFleet) poll(ctx context.Context, a *testAgent) {
	defer f.loops.Done()
	var rev int64
	// pending is the acknowledgement the next long-poll carries, as a
	// real agent's does (POST .../desired with its status); separate
	// reports (POST .../status) only against a server without it, or
	// with CORRIDOR_BENCH_SEPARATE_ACK=1.
	var pending *api.Status
	separate := os.Getenv("CORRIDOR_BENCH_SEPARATE_ACK") == "1"
	acked := func() {
		if f.acked.Add(1) == int64(f.n) {
			f.allAckd <- struct{}{}
		}
	}
	for ctx.Err() == nil {
		var ds api.DesiredState
		var err error
		if pending != nil {
			st := *pending
			ds, err = a.c.DesiredWithStatus(ctx, a.name, rev, time.Minute, st, func() {
				pending = nil
				acked()
			})
			if errors.Is(err, api.ErrPollStatusUnsupported) {
				separate = true
				continue
			}
		} else {
			ds, err = a.c.Desired(ctx, a.name, rev, time.Minute)
		}
		if err != nil {
			// A report that fails (a timeout on a loaded machine) is sent
			// again with the next poll: one lost acknowledgement would
			// stall the whole run.
			sleepCtx(ctx, 50*time.Millisecond)
			continue
		}
		if ds.Revision == rev {
			continue
		}
		rev = ds.Revision
		t := f.target.Load()
		if t == 0 || !strings.Contains(string(mustJSON(ds.State.Guests)), fmt.Sprintf("gen-%d\"", t)) {
			continue
		}
		if f.got.Add(1) == int64(f.n) {
			f.allGot <- struct{}{}
		}
		// Acknowledge, as an agent does once applied: the same identity as
		// at join, the new revision.
		req := a.req
		st := api.Status{Name: a.name, Address: req.Address, PublicKey: req.PublicKey, WireGuardPort: req.WireGuardPort,
			Capacity: req.Capacity, Labels: req.Labels, AppliedRevision: rev, Time: time.Now()}
		if !separate {
			pending = &st
			continue
		}
		for delay := 50 * time.Millisecond; ctx.Err() == nil; delay = min(2*delay, 2*time.Second) {
			if err := a.c.ReportStatus(ctx, a.name, st); err == nil {
				acked()
				break
			}
			sleepCtx(ctx, delay)
		}
	}
}

func (f *localFleet) arm(gen int64) error {
	f.got.Store(0)
	f.acked.Store(0)
	f.target.Store(gen)
	return nil
}

func (f *localFleet) wait(stage string, bound time.Duration) error {
	ch, count := f.allGot, &f.got
	if stage == fleetAcked {
		ch, count = f.allAckd, &f.acked
	}
	select {
	case <-ch:
		return nil
	case <-time.After(bound):
		return fmt.Errorf("only %d of %d hosts %s the change within %v", count.Load(), f.n, stage, bound)
	}
}

// stop ends the polls; the server must answer the parked ones (hub.close)
// for it to return soon.
func (f *localFleet) stop() {
	f.cancel()
	f.loops.Wait()
}

// The child process's side: fleetEnv carries its configuration, and it
// speaks in lines. From the parent: "arm <gen>", "stats"; end of input
// ends it. To the parent, each line starting with fleetPrefix (the test
// framework's own output is ignored): "joined", "got <gen>",
// "acked <gen>", "stats <heap-MB> <goroutines>", "log <text>" and
// "error <text>".
const (
	fleetEnv    = "CORRIDOR_BENCH_FLEET"
	fleetPrefix = "corridor-fleet: "
)

type fleetConfig struct {
	URL   string `json:"url"`
	CA    string `json:"ca"`
	Token string `json:"token"`
	Hosts int    `json:"hosts"`
}

// TestFanoutFleetHelper is not a test: it is the child process that
// BenchmarkLongPollFanout starts when the simulated hosts do not fit in
// its own process (open-file limit). It skips unless started so.
func TestFanoutFleetHelper(t *testing.T) {
	raw := os.Getenv(fleetEnv)
	if raw == "" {
		t.Skip("the benchmark's child process; runs only when " + fleetEnv + " is set")
	}
	var cfg fleetConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatalf("%s: %v", fleetEnv, err)
	}
	// One process simulates thousands of agents (each a real one's
	// connections, decoding and reports) with one heap: its garbage
	// collector marks all of them, thousands of goroutine stacks, at every
	// cycle, work that real agents, each a process with a heap of its
	// own, do not share. A rarer collection keeps that simulation cost
	// from taking the cores the server is measured on. The server's
	// process keeps the default.
	debug.SetGCPercent(400)
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(os.Stdout, fleetPrefix+format+"\n", args...)
	}
	fileLimit(uint64(cfg.Hosts + fdSlack))
	agents, err := joinFleet(context.Background(), cfg.URL, []byte(cfg.CA), cfg.Token, cfg.Hosts, func(f string, a ...any) { say("log "+f, a...) })
	if err != nil {
		say("error %s", strings.ReplaceAll(err.Error(), "\n", " "))
		return
	}
	f := startFleet(agents)
	defer f.stop()
	say("joined")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		switch cmd {
		case "arm":
			gen, err := strconv.ParseInt(arg, 10, 64)
			if err != nil {
				say("error arm: %v", err)
				continue
			}
			f.arm(gen)
			say("armed %d", gen)
			// CORRIDOR_BENCH_AGENTS_CPUPROFILE=file profiles this process
			// over the first timed change (the first app's generation is
			// 1<<20, the timed ones count from 1).
			stopProfile := func() {}
			if path := os.Getenv("CORRIDOR_BENCH_AGENTS_CPUPROFILE"); path != "" && gen == 1 {
				if pf, err := os.Create(path); err == nil && pprof.StartCPUProfile(pf) == nil {
					stopProfile = func() { pprof.StopCPUProfile(); pf.Close() }
				}
			}
			go func() {
				defer stopProfile()
				for _, stage := range []string{fleetGot, fleetAcked} {
					// The parent has its own bound; this one only ends the
					// goroutine of a run the parent gave up on.
					if err := f.wait(stage, time.Hour); err != nil {
						say("error %v", err)
						return
					}
					say("%s %d", stage, gen)
				}
			}()
		case "stats":
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			say("stats %.1f %d", float64(ms.HeapAlloc)/(1<<20), runtime.NumGoroutine())
		}
	}
	// End of input: the parent is done. Its server answers the parked
	// polls as it stops; do not wait for that.
	f.cancel()
}

// remoteFleet is the parent's handle on the child process.
type remoteFleet struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string // the child's protocol lines, prefix removed
	logf  func(string, ...any)
	gen   int64
}

func startRemoteFleet(ts *testServer, n int, logf func(string, ...any)) (*remoteFleet, error) {
	cfg, err := json.Marshal(fleetConfig{URL: ts.URL(), CA: string(ts.CACert()), Token: ts.JoinToken(), Hosts: n})
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFanoutFleetHelper$", "-test.bench=^$", "-test.count=1", "-test.timeout=0")
	cmd.Env = append(os.Environ(), fleetEnv+"="+string(cfg))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the simulated hosts' process: %w", err)
	}
	rf := &remoteFleet{cmd: cmd, in: in, lines: make(chan string, 16), logf: logf}
	go func() {
		defer close(rf.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), fleetPrefix); ok {
				rf.lines <- line
			}
		}
	}()
	if err := rf.expect("joined", 15*time.Minute); err != nil {
		rf.stop()
		return nil, err
	}
	return rf, nil
}

// expect reads the child's lines until want, logging what it logs.
func (rf *remoteFleet) expect(want string, bound time.Duration) error {
	_, err := rf.expectPrefix(want, bound)
	return err
}

func (rf *remoteFleet) expectPrefix(want string, bound time.Duration) (string, error) {
	timeout := time.After(bound)
	for {
		select {
		case line, ok := <-rf.lines:
			if !ok {
				return "", fmt.Errorf("the simulated hosts' process ended before %q", want)
			}
			switch {
			case strings.HasPrefix(line, want):
				return line, nil
			case strings.HasPrefix(line, "log "):
				rf.logf("hosts process: %s", strings.TrimPrefix(line, "log "))
			case strings.HasPrefix(line, "error "):
				return "", fmt.Errorf("hosts process: %s", strings.TrimPrefix(line, "error "))
			}
		case <-timeout:
			return "", fmt.Errorf("no %q from the simulated hosts' process within %v", want, bound)
		}
	}
}

// arm returns once the child has armed gen: a host that got the change
// before would not count it.
func (rf *remoteFleet) arm(gen int64) error {
	rf.gen = gen
	if _, err := fmt.Fprintf(rf.in, "arm %d\n", gen); err != nil {
		return err
	}
	return rf.expect(fmt.Sprintf("armed %d", gen), time.Minute)
}

func (rf *remoteFleet) wait(stage string, bound time.Duration) error {
	return rf.expect(fmt.Sprintf("%s %d", stage, rf.gen), bound)
}

func (rf *remoteFleet) stats(bound time.Duration) (heapMB float64, goroutines int, err error) {
	if _, err := fmt.Fprintln(rf.in, "stats"); err != nil {
		return 0, 0, err
	}
	line, err := rf.expectPrefix("stats ", bound)
	if err != nil {
		return 0, 0, err
	}
	if _, err := fmt.Sscanf(line, "stats %f %d", &heapMB, &goroutines); err != nil {
		return 0, 0, fmt.Errorf("hosts process: %q: %w", line, err)
	}
	return heapMB, goroutines, nil
}

// stop closes the child's input, which ends it, and kills it (by its own
// PID) if it has not ended within 30 s.
func (rf *remoteFleet) stop() {
	rf.in.Close()
	done := make(chan struct{})
	go func() {
		for range rf.lines { // keep the pipe drained so that it can exit
		}
		rf.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		rf.cmd.Process.Kill()
		<-done
	}
}

// fanoutApp has one task per host (the compiler places a task of an app
// on a server that runs none of it first), whose command names the
// generation: every host's desired state changes. Classes hold at most
// spec.MaxTasks tasks, so larger fleets get several.
func fanoutApp(n, gen int) string {
	var b strings.Builder
	b.WriteString("apiVersion: corridor/v1\nkind: App\nname: fanout\nclasses:\n")
	for c := 0; n > 0; c++ {
		k := min(n, spec.MaxTasks)
		n -= k
		fmt.Fprintf(&b, `  - name: c%d
    tasks: %d
    guest:
      runtime: netns
      command: [sleep, "gen-%d"]
    resources:
      cpu: 10m
      memory: 4Mi
`, c, k, gen)
	}
	return b.String()
}

// BenchmarkLongPollWake is the single-host case of the long-poll: a host
// parked on its revision, an apply that changes its state (an app pinned
// to its zone, scaled 1 <-> 2), and the time from the apply call's return
// to the host holding its new state. A second host, parked too, must sleep
// through every change (its state never changes). Reported: wake-ms
// (median over the iterations), wake-max-ms, and apply-ms (the apply
// call). Issue 3's target is a wake within 100 ms; TestLongPoll checks
// only that the wake comes from the change and not from the poll's
// timeout, since a timed unit test fails on a loaded machine.
func BenchmarkLongPollWake(b *testing.B) {
	ts := startServer(b, Config{DataDir: b.TempDir()})
	a1 := ts.join(b, "s1", 0, map[string]string{"zone": "a"})
	a2 := ts.join(b, "s2", 1, map[string]string{"zone": "b"})
	ctx := context.Background()
	if _, err := ts.admin.ApplyApp(ctx, []byte(oneClassApp("wake", 1, "a"))); err != nil {
		b.Fatal(err)
	}
	ts.settle(b)
	d2, err := a2.c.Desired(ctx, "s2", 0, 0)
	if err != nil {
		b.Fatal(err)
	}
	woke2 := make(chan api.DesiredState, 1)
	go func() {
		ds, _ := a2.c.Desired(ctx, "s2", d2.Revision, time.Minute)
		woke2 <- ds
	}()

	var wakes, applies []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d1, err := a1.c.Desired(ctx, "s1", 0, 0)
		if err != nil {
			b.Fatal(err)
		}
		type woke struct {
			ds  api.DesiredState
			at  time.Time
			err error
		}
		w := make(chan woke, 1)
		parked := ts.hub.parked.Load()
		go func() {
			ds, err := a1.c.Desired(ctx, "s1", d1.Revision, time.Minute)
			w <- woke{ds, time.Now(), err}
		}()
		for ts.hub.parked.Load() <= parked {
			time.Sleep(time.Millisecond)
		}
		sent := time.Now()
		if _, err := ts.admin.ApplyApp(ctx, []byte(oneClassApp("wake", 2-i%2, "a"))); err != nil {
			b.Fatal(err)
		}
		applied := time.Now()
		r := <-w
		if r.err != nil || r.ds.Revision <= d1.Revision {
			b.Fatalf("s1 woke with revision %d (was %d): %v", r.ds.Revision, d1.Revision, r.err)
		}
		wakes = append(wakes, max(r.at.Sub(applied), 0))
		applies = append(applies, applied.Sub(sent))
	}
	b.StopTimer()
	select {
	case ds := <-woke2:
		b.Fatalf("s2 woke (revision %d, was %d) for changes that do not touch it", ds.Revision, d2.Revision)
	default:
	}
	med := func(ds []time.Duration) float64 {
		ds = append([]time.Duration(nil), ds...)
		slices.Sort(ds)
		return float64(ds[len(ds)/2].Microseconds()) / 1000
	}
	b.ReportMetric(med(wakes), "wake-ms")
	b.ReportMetric(float64(slices.Max(wakes).Microseconds())/1000, "wake-max-ms")
	b.ReportMetric(med(applies), "apply-ms")
}
