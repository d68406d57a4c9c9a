package vm

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// BenchmarkBootToReady measures from Ensure to the guest's ready line
// (network up, task about to start) and then to the task answering on
// TCP, for five boots per iteration; it reports the medians. Run with
// -benchtime=1x.
func BenchmarkBootToReady(b *testing.B) {
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	nsPath := hostNS(b, "bench")
	const boots = 5
	var ready, serving []time.Duration
	var rt string
	for i := 0; i < b.N; i++ {
		for j := 0; j < boots; j++ {
			r := newTestRuntime(b, nsPath)
			addr := netip.MustParseAddr(fmt.Sprintf("100.64.8.%d", 10+j))
			g := dbGuest("t/db/0", fmt.Sprintf("corvm%d", os.Getpid()%100000), addr)
			start := time.Now()
			if err := r.Ensure(context.Background(), g); err != nil {
				b.Fatal(err)
			}
			st := waitState(b, r, g.Task, 120*time.Second, func(s api.TaskStatus) bool { return s.State == api.TaskRunning })
			ready = append(ready, time.Since(start))
			pingUntil(b, nsPath, addr, 60*time.Second, r, g.Task)
			serving = append(serving, time.Since(start))
			rt = st.Runtime
			if err := r.Remove(context.Background(), g.Task); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(median(ready).Seconds(), "s-to-ready")
	b.ReportMetric(median(serving).Seconds(), "s-to-serving")
	b.Logf("runtime %s; to ready %v; to serving %v", rt, ready, serving)
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
