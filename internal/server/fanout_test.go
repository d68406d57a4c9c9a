package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/corridor-dev/corridor/internal/api"
)

// histCount is the sample count of a histogram of the server's registry.
func histCount(t testing.TB, ts *testServer, name string) uint64 {
	t.Helper()
	fams, err := ts.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, f := range fams {
		if f.GetName() != name || f.GetType() != dto.MetricType_HISTOGRAM {
			continue
		}
		for _, m := range f.Metric {
			n += m.Histogram.GetSampleCount()
		}
	}
	return n
}

// pendingHost starts a server with one joined host, s1, applies a
// one-task app and waits until s1 has its desired state and the fan-out
// of it is pending: the start of every fan-out and status test.
func pendingHost(t *testing.T, app string) (*testServer, *testAgent, int64) {
	t.Helper()
	ts := startServer(t, Config{})
	a := ts.join(t, "s1", 0, nil)
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp(app, 1, ""))); err != nil {
		t.Fatal(err)
	}
	var rev int64
	eventually(t, 20*time.Second, "s1 has a desired state and is pending", func() (bool, string) {
		ds, err := ts.admin.HostDesired(bg, "s1")
		if err == nil {
			rev = ds.Revision
		}
		return err == nil && len(ds.State.Guests) == 1 && ts.hub.pending() == 1, fmt.Sprint(rev, err, ts.hub.pending())
	})
	return ts, a, rev
}

// A new desired state counts as pending until the host reports it
// applied; then its fan-out time is observed once.
func TestFanoutObserved(t *testing.T) {
	t.Parallel()
	ts, a, rev := pendingHost(t, "f")
	before := histCount(t, ts, "corridor_fanout_duration_seconds")
	// A status of an older revision does not end the fan-out.
	if err := a.c.ReportStatus(context.Background(), "s1", api.Status{Name: "s1", AppliedRevision: rev - 1, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := a.c.ReportStatus(context.Background(), "s1", api.Status{Name: "s1", AppliedRevision: rev, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "fan-out observed", func() (bool, string) {
		n := histCount(t, ts, "corridor_fanout_duration_seconds")
		return n == before+1 && ts.hub.pending() == 0, fmt.Sprint(n, " observed, ", ts.hub.pending(), " pending")
	})
	if n := histCount(t, ts, "corridor_apply_duration_seconds"); n != 1 {
		t.Errorf("apply latency observed %d times, want 1", n)
	}
}

// A verify run posted for an app is what the console shows as its last
// run, with a line per check that did not pass; an app without a run has
// none.
func TestConsoleShowsLastVerifyRun(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ts.join(t, "s1", 0, nil)
	for _, app := range []string{"v", "w"} {
		if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp(app, 1, ""))); err != nil {
			t.Fatal(err)
		}
	}
	for _, ok := range []bool{true, false} {
		obs := "encrypted"
		if !ok {
			obs = "plain"
		}
		body := fmt.Sprintf(`{"app":"v","checks":[{"app":"v","fromTask":"v/a/0","toTask":"v/a/1","protocol":"tcp","port":80,"expect":"encrypted","observed":%q,"ok":%v}],"passed":0,"failed":0,"incomplete":0}`, obs, ok)
		if _, err := ts.admin.PostVerifyRun(bg, "v", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	st, err := consoleSource{ts.Server}.State(bg)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Verify) != 1 || st.Verify[0].App != "v" || st.Verify[0].Passed || st.Verify[0].Checks != 1 || st.Verify[0].Failed != 1 ||
		len(st.Verify[0].Summary) != 1 || st.Verify[0].Summary[0] != "v/a/0 -> v/a/1 tcp/80: expected encrypted, observed plain" {
		t.Fatalf("console verify = %+v", st.Verify)
	}
}
