package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// bigApp is an app of one class of n tasks of 3 cpu each: on the test
// servers (4 cpu) one task per server.
func bigApp(name string, n int) []byte {
	return []byte(strings.Replace(oneClassApp(name, n, ""), "cpu: 10m", "cpu: 3", 1))
}

// gauge is the value of the server's gauge name.
func gauge(t *testing.T, ts *testServer, name string) float64 {
	t.Helper()
	mfs, err := ts.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

func eventsOf(t *testing.T, ts *testServer, action string) []api.Event {
	t.Helper()
	all, err := ts.admin.ListEvents(bg, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []api.Event
	for _, e := range all {
		if e.Action == action {
			out = append(out, e)
		}
	}
	return out
}

// A server goes down and the one left has no room for its task: the task
// is pending with the reason (get tasks, an event, the metric), the rest
// of the fleet goes on (another app still applies and is placed), and a
// server that joins takes the task, at the address it kept, with a
// task.placed event.
func TestHostLossLeavesTasksPendingUntilAServerJoins(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{HeartbeatTimeout: 3 * time.Second})
	a1 := ts.join(t, "s1", 0, nil)
	a2 := ts.join(t, "s2", 1, nil)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	report := func(a *testAgent, stop <-chan struct{}) {
		for ctx.Err() == nil {
			select {
			case <-stop:
				return
			default:
			}
			a.c.ReportStatus(ctx, a.name, api.Status{Name: a.name})
			sleepCtx(ctx, 200*time.Millisecond)
		}
	}
	go report(a1, nil)
	stop2 := make(chan struct{})
	go report(a2, stop2)
	eventually(t, 10*time.Second, "both servers ready", func() (bool, string) {
		ss, err := ts.admin.ListServers(bg)
		ready := 0
		for _, s := range ss {
			if s.State == "ready" && !s.LastSeen.IsZero() {
				ready++
			}
		}
		return err == nil && ready == 2, fmt.Sprint(ss, err)
	})
	if _, err := ts.admin.ApplyApp(bg, bigApp("big", 2)); err != nil {
		t.Fatal(err)
	}
	var lost api.TaskInfo
	eventually(t, 10*time.Second, "one task on each server", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{})
		for _, x := range tt {
			if x.Server == "s2" {
				lost = x
			}
		}
		return len(tt) == 2 && lost.ID != "", fmt.Sprint(tt)
	})

	close(stop2)
	var pend api.TaskInfo
	eventually(t, 10*time.Second, "the task of s2 pending", func() (bool, string) {
		for _, x := range tasksOf(t, ts.admin, api.Filter{Task: lost.ID}) {
			pend = x
		}
		return pend.Pending != "", fmt.Sprintf("%+v", pend)
	})
	if pend.Server != "" || pend.Address != lost.Address || pend.Status != nil ||
		!strings.Contains(pend.Pending, "needs cpu 3000m") || !strings.Contains(pend.Pending, "the closest, s1, has cpu 1000m") {
		t.Errorf("pending task %+v: want no server, address %s, the reason naming s1", pend, lost.Address)
	}
	eventually(t, 10*time.Second, "a task.pending event", func() (bool, string) {
		ev := eventsOf(t, ts, EventTaskPending)
		return len(ev) == 1 && ev[0].Object == "task/"+lost.ID && ev[0].Message == pend.Pending, fmt.Sprint(ev)
	})
	if got := gauge(t, ts, "corridor_tasks_pending"); got != 1 {
		t.Errorf("corridor_tasks_pending = %v, want 1", got)
	}
	if ev := eventsOf(t, ts, "compile.error"); len(ev) != 0 {
		t.Errorf("compile errors: %v", ev)
	}
	// The rest goes on: an app that fits is applied and placed.
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("small", 1, ""))); err != nil {
		t.Fatalf("apply of an app that fits while a task is pending: %v", err)
	}
	eventually(t, 10*time.Second, "small placed on s1", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{App: "small"})
		return len(tt) == 1 && tt[0].Server == "s1", fmt.Sprint(tt)
	})

	a3 := ts.join(t, "s3", 2, nil)
	go report(a3, nil)
	eventually(t, 10*time.Second, "the pending task placed on s3", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{Task: lost.ID})
		return len(tt) == 1 && tt[0].Server == "s3" && tt[0].Pending == "", fmt.Sprint(tt)
	})
	placed := tasksOf(t, ts.admin, api.Filter{Task: lost.ID})[0]
	if placed.Address != lost.Address {
		t.Errorf("placed %+v: want address %s", placed, lost.Address)
	}
	eventually(t, 10*time.Second, "a task.placed event", func() (bool, string) {
		ev := eventsOf(t, ts, EventTaskPlaced)
		return len(ev) == 1 && ev[0].Object == "task/"+lost.ID && strings.HasPrefix(ev[0].Message, "on s3: was pending; "), fmt.Sprint(ev)
	})
	eventually(t, 10*time.Second, "the metric back to 0", func() (bool, string) {
		got := gauge(t, ts, "corridor_tasks_pending")
		return got == 0, fmt.Sprint(got)
	})
	if ev := eventsOf(t, ts, EventTaskPending); len(ev) != 1 {
		t.Errorf("task.pending events: %v, want exactly one", ev)
	}
}

// An apply that would make tasks pending is refused whole (422, nothing
// stored) and says which and why; with AllowPending it is stored, the
// answer lists the pending tasks, and they are listed pending.
func TestApplyThatDoesNotFit(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ts.join(t, "s1", 0, nil)
	_, err := ts.admin.ApplyApp(bg, bigApp("big", 2))
	if api.HTTPStatus(err) != http.StatusUnprocessableEntity || !strings.Contains(err.Error(), "task big/c/1 would be pending: no server fits") ||
		!strings.Contains(err.Error(), "--allow-pending") {
		t.Fatalf("apply of an app that does not fit = %v, want 422 naming big/c/1", err)
	}
	if apps, _ := ts.admin.ListApps(bg); len(apps) != 0 {
		t.Fatalf("stored: %+v", apps)
	}
	plan, err := ts.admin.Plan(bg, bigApp("big", 2), api.ApplyOptions{AllowPending: true})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range plan.Changes {
		found = found || (c.Name == "big/c/1" && c.Action == "pending" && strings.Contains(c.Detail, "no server fits"))
	}
	if !found {
		t.Errorf("plan changes %+v: no pending change for big/c/1", plan.Changes)
	}
	res, err := ts.admin.ApplyApp(bg, bigApp("big", 2), api.ApplyOptions{AllowPending: true})
	if err != nil {
		t.Fatalf("apply with AllowPending: %v", err)
	}
	if len(res.Pending) != 1 || res.Pending[0].ID != "big/c/1" || !strings.Contains(res.Pending[0].Pending, "no server fits") {
		t.Errorf("apply result pending = %+v", res.Pending)
	}
	eventually(t, 10*time.Second, "big/c/0 placed, big/c/1 pending", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{App: "big"})
		return len(tt) == 2 && tt[0].ID == "big/c/0" && tt[0].Server == "s1" && tt[1].ID == "big/c/1" && tt[1].Pending != "", fmt.Sprint(tt)
	})
	// Applied again unchanged, or changed while its task is still
	// pending: not refused (it makes no new task pending).
	if _, err := ts.admin.ApplyApp(bg, []byte(strings.Replace(string(bigApp("big", 2)), "memory: 4Mi", "memory: 8Mi", 1))); err != nil {
		t.Errorf("apply that makes no new task pending: %v", err)
	}
}
