package server

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
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
// apply call alone) and heap-MB (live heap of the whole process, clients
// included, with all hosts parked). 10,000 simulated hosts in this one
// process did not get through their joins here (see bench/RESULTS.md).
func BenchmarkLongPollFanout(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) { benchFanout(b, n) })
	}
}

func benchFanout(b *testing.B, n int) {
	ts := startServer(b, Config{HeartbeatTimeout: time.Hour})
	agents := make([]*testAgent, n)
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				agents[i] = ts.join(b, fmt.Sprintf("h%04d", i), i, nil)
			}
		}()
	}
	wg.Wait()

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
	parkAll := func() {
		deadline := time.Now().Add(60 * time.Second)
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
		case <-time.After(60 * time.Second):
			b.Fatalf("only %d of %d hosts got the change", got.Load(), n)
		}
		fanout += time.Since(start)
		select {
		case <-allAcked:
		case <-time.After(60 * time.Second):
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
