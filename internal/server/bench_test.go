package server

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// BenchmarkLongPollFanout: one real server (embedded etcd), N simulated
// hosts long-polling their desired state over HTTPS with mTLS, in this
// process. Each iteration applies a change that touches every host (an app
// with one task per host whose command changes) and measures the time
// until every host has received its new revision, and until every host has
// acknowledged it (a status report saying it applied that revision, as a
// real agent sends after applying). Reported: fanout-ms (apply sent to last
// host served), ack-ms (to last acknowledgement accepted), apply-ms (the
// apply call alone), join-s (all N hosts joining, 16 at a time, before the
// timer starts), heap-MB (live heap of the whole process, clients
// included, with all hosts parked) and goroutines.
//
// The sizes are 10, 100 and 1,000 hosts; CORRIDOR_BENCH_HOSTS replaces
// them with a comma-separated list, e.g. CORRIDOR_BENCH_HOSTS=10000 (two
// file descriptors per host in this one process; the benchmark raises its
// limit when it may and fails naming the need when it may not).
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
		if err != nil || n < 1 || n > 62500 {
			// 62,500: the simulated underlay addresses (198.18.x.y) run out.
			return nil, fmt.Errorf("CORRIDOR_BENCH_HOSTS: %q is not a host count from 1 to 62500", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// ensureFiles makes sure the process may hold need open files: each
// simulated host holds its mTLS connection at both ends, in this process.
func ensureFiles(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read open-file limit: %w", err)
	}
	if lim.Cur >= need {
		return nil
	}
	want := lim
	want.Cur = need
	want.Max = max(lim.Max, need)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return fmt.Errorf("need %d open files (two per simulated host), the limit is %d/%d and raising it failed: %w (run with a higher ulimit -n)", need, lim.Cur, lim.Max, err)
	}
	return nil
}

// joinFleet joins n hosts, 16 at a time, retrying what a real agent
// retries (connection errors, timeouts, 408, 429 and 5xx) with backoff.
// Only the calling goroutine may fail b: it reports the first error that
// was not retried, or outlived the retries, and how many hosts failed.
func joinFleet(b *testing.B, ts *testServer, n int) []*testAgent {
	b.Helper()
	agents := make([]*testAgent, n)
	var (
		wg       sync.WaitGroup
		next     atomic.Int64
		mu       sync.Mutex
		firstErr error
		failed   int
		retried  = map[string]int{} // transient failures by message, for the log
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
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
					a, err := ts.tryJoin(ctx, name, i, nil)
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
		b.Logf("join retried %d times after: %s", k, msg)
	}
	if firstErr != nil {
		b.Fatalf("%d of %d hosts failed to join; first error: %v", failed, n, firstErr)
	}
	return agents
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

func benchFanout(b *testing.B, n int) {
	if err := error(nil); err != nil && ensureFiles(0) != nil {
		b.Fatal(err)
	}
	ts := startServer(b, Config{HeartbeatTimeout: time.Hour})
	joinStart := time.Now()
	agents := joinFleet(b, ts, n)
	joinTime := time.Since(joinStart)

	// Every host long-polls in a loop and records the newest revision it
	// got; got counts hosts that reached target.
	ctx, cancel := context.WithCancel(context.Background())
	var target, got, acked atomic.Int64
	allGot := make(chan struct{}, 1)
	allAcked := make(chan struct{}, 1)
	var loops sync.WaitGroup
	for i, a := range agents {
		loops.Add(1)
		go func(name string, c *api.Client, req api.JoinRequest) {
			defer loops.Done()
			var rev int64
			for ctx.Err() == nil {
				ds, err := c.Desired(ctx, name, rev, time.Minute)
				if err != nil {
					sleepCtx(ctx, 50*time.Millisecond)
					continue
				}
				if ds.Revision != rev {
					rev = ds.Revision
					if t := target.Load(); t != 0 && strings.Contains(string(mustJSON(ds.State.Guests)), fmt.Sprintf("gen-%d\"", t)) {
						if got.Add(1) == int64(len(agents)) {
							allGot <- struct{}{}
						}
						// Acknowledge, as an agent does once applied: the
						// same identity as at join, the new revision.
						st := api.Status{Name: name, Address: req.Address, PublicKey: req.PublicKey, WireGuardPort: req.WireGuardPort,
							Capacity: req.Capacity, Labels: req.Labels, AppliedRevision: rev, Time: time.Now()}
						if err := c.ReportStatus(ctx, name, st); err == nil && acked.Add(1) == int64(len(agents)) {
							allAcked <- struct{}{}
						}
					}
				}
			}
		}(fmt.Sprintf("h%04d", i), a.c, a.req)
	}
	defer func() {
		cancel()
		ts.hub.close()
		loops.Wait()
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
	// A first app so that later iterations are updates, like a rollout.
	if _, err := ts.admin.ApplyApp(bg, []byte(fanoutApp(n, 0))); err != nil {
		b.Fatal(err)
	}
	var fanout, ack, apply time.Duration
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		b.StopTimer()
		// Wait for the previous generation to settle everywhere.
		time.Sleep(200 * time.Millisecond)
		parkAll()
		got.Store(0)
		acked.Store(0)
		target.Store(int64(i))
		b.StartTimer()
		start := time.Now()
		if _, err := ts.admin.ApplyApp(bg, []byte(fanoutApp(n, i))); err != nil {
			b.Fatal(err)
		}
		apply += time.Since(start)
		select {
		case <-allGot:
		case <-time.After(bound):
			b.Fatalf("only %d of %d hosts got the change", got.Load(), n)
		}
		fanout += time.Since(start)
		select {
		case <-allAcked:
		case <-time.After(bound):
			b.Fatalf("only %d of %d hosts acknowledged the change", acked.Load(), n)
		}
		ack += time.Since(start)
	}
	b.StopTimer()
	parkAll()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(fanout.Milliseconds())/float64(b.N), "fanout-ms")
	b.ReportMetric(float64(ack.Milliseconds())/float64(b.N), "ack-ms")
	b.ReportMetric(float64(apply.Milliseconds())/float64(b.N), "apply-ms")
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MB")
	b.ReportMetric(float64(runtime.NumGoroutine()), "goroutines")
	b.ReportMetric(joinTime.Seconds(), "join-s")
}

// fanoutApp has one task per host (the compiler spreads first), whose
// command names the generation: every host's desired state changes.
func fanoutApp(n, gen int) string {
	return fmt.Sprintf(`apiVersion: corridor/v1
kind: App
name: fanout
classes:
  - name: c
    tasks: %d
    guest:
      runtime: netns
      command: [sleep, "gen-%d"]
    resources:
      cpu: 10m
      memory: 4Mi
`, n, gen)
}
