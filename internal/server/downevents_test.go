package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// A server that stops reporting gets one server.down event naming the
// tasks that leave it; when it reports again, one server.up event.
func TestServerDownAndUpEvents(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{HeartbeatTimeout: 3 * time.Second})
	a1 := ts.join(t, "s1", 0, map[string]string{"zone": "a"})
	a2 := ts.join(t, "s2", 1, map[string]string{"zone": "b"})
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	report := func(a *testAgent, name string, stop <-chan struct{}) {
		for ctx.Err() == nil {
			select {
			case <-stop:
				return
			default:
			}
			a.c.ReportStatus(ctx, name, api.Status{Name: name})
			sleepCtx(ctx, 200*time.Millisecond)
		}
	}
	go report(a1, "s1", nil)
	stop2 := make(chan struct{})
	go report(a2, "s2", stop2)
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("ev", 2, ""))); err != nil {
		t.Fatal(err)
	}
	var onS2 string
	eventually(t, 10*time.Second, "one task on each server", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{})
		for _, x := range tt {
			if x.Server == "s2" {
				onS2 = x.ID
			}
		}
		return len(tt) == 2 && onS2 != "", fmt.Sprint(tt)
	})
	close(stop2)
	// Only s2's events count: on a loaded machine s1 (reporting every
	// 200 ms) may miss a timeout too, which is not what this test is about.
	events := func(action string) []api.Event {
		all, err := ts.admin.ListEvents(bg, 0)
		if err != nil {
			t.Fatal(err)
		}
		var out []api.Event
		for _, e := range all {
			if e.Action == action && e.Object == "server/s2" {
				out = append(out, e)
			}
		}
		return out
	}
	eventually(t, 10*time.Second, "a server.down event for s2", func() (bool, string) {
		ev := events(EventServerDown)
		return len(ev) == 1, fmt.Sprint(ev)
	})
	if ev := events(EventServerDown)[0]; !strings.Contains(ev.Message, onS2) || !strings.Contains(ev.Message, "heartbeat timeout 3s") {
		t.Errorf("server.down message %q does not name the task %s and the timeout", ev.Message, onS2)
	}
	if ev := events(EventServerUp); len(ev) != 0 {
		t.Fatalf("server.up before s2 reported again: %v", ev)
	}
	go report(a2, "s2", nil)
	eventually(t, 10*time.Second, "a server.up event for s2", func() (bool, string) {
		ev := events(EventServerUp)
		return len(ev) == 1, fmt.Sprint(ev)
	})
	if ev := events(EventServerDown); len(ev) != 1 {
		t.Errorf("server.down events: %v, want exactly one", ev)
	}
}
