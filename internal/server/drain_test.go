package server

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Draining a server shows it draining, moves its tasks elsewhere (keeping
// their addresses), records drain and drained events, and lands no new
// task there; undraining makes it ready again without moving tasks back.
func TestDrainServer(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	for i, n := range []string{"s1", "s2", "s3"} {
		ts.join(t, n, i, map[string]string{"zone": string(rune('a' + i))})
	}
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("dr", 3, ""))); err != nil {
		t.Fatal(err)
	}
	before := map[string]api.TaskInfo{}
	eventually(t, 10*time.Second, "one task on each server", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{})
		on := map[string]bool{}
		for _, x := range tt {
			on[x.Server] = true
			before[x.ID] = x
		}
		return len(tt) == 3 && len(on) == 3, fmt.Sprint(tt)
	})
	var drained api.TaskInfo
	for _, x := range before {
		if x.Server == "s2" {
			drained = x
		}
	}

	srv, err := ts.admin.DrainServer(bg, "s2", true)
	if err != nil || srv.State != spec.ServerDraining {
		t.Fatalf("drain s2: %+v, %v", srv.State, err)
	}
	eventually(t, 10*time.Second, "s2's task moved", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{})
		for _, x := range tt {
			if x.ID == drained.ID {
				return x.Server != "s2" && x.Address == drained.Address, fmt.Sprint(x)
			}
		}
		return false, fmt.Sprint(tt)
	})
	for _, x := range tasksOf(t, ts.admin, api.Filter{}) {
		if x.ID != drained.ID && x.Server != before[x.ID].Server {
			t.Errorf("%s moved from %s to %s: only s2's task should", x.ID, before[x.ID].Server, x.Server)
		}
	}
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
	if ev := events(EventServerDrain); len(ev) != 1 || !strings.Contains(ev[0].Message, drained.ID) || ev[0].Who != "admin" {
		t.Errorf("drain events: %+v, want one by admin naming %s", ev, drained.ID)
	}
	eventually(t, 10*time.Second, "a server.drained event", func() (bool, string) {
		ev := events(EventServerDrained)
		return len(ev) == 1 && strings.Contains(ev[0].Message, drained.ID), fmt.Sprint(ev)
	})
	// Draining again changes nothing and records nothing.
	if _, err := ts.admin.DrainServer(bg, "s2", true); err != nil {
		t.Fatal(err)
	}
	if ev := events(EventServerDrain); len(ev) != 1 {
		t.Errorf("a second drain recorded %d drain events", len(ev))
	}

	// No new task lands on s2.
	if _, err := ts.admin.Scale(bg, "dr", "c", 6); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "6 tasks, none on s2", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{})
		for _, x := range tt {
			if x.Server == "s2" {
				return false, fmt.Sprint(tt)
			}
		}
		return len(tt) == 6, fmt.Sprint(tt)
	})

	srv, err = ts.admin.DrainServer(bg, "s2", false)
	if err != nil || srv.State != spec.ServerReady {
		t.Fatalf("undrain s2: %+v, %v", srv.State, err)
	}
	if ev := events(EventServerUndrain); len(ev) != 1 {
		t.Errorf("undrain events: %+v", ev)
	}
	if _, err := ts.admin.Scale(bg, "dr", "c", 7); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the new task on s2, the ready server with the fewest tasks", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{})
		for _, x := range tt {
			if x.ID == "dr/c/6" {
				return x.Server == "s2", fmt.Sprint(x)
			}
		}
		return false, fmt.Sprint(tt)
	})

	if _, err := ts.admin.DrainServer(bg, "s9", true); api.HTTPStatus(err) != http.StatusNotFound {
		t.Errorf("drain of an unknown server: %v, want 404", err)
	}
	if err := ts.admin.RemoveServer(bg, "s3"); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.admin.DrainServer(bg, "s3", true); api.HTTPStatus(err) != http.StatusConflict {
		t.Errorf("drain of a removed server: %v, want 409", err)
	}
}
