package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// pendingApp has a class only zone c (the lab's s3) can take.
const pendingApp = `apiVersion: corridor/v1
kind: App
name: %s
classes:
  - name: front
    tasks: 1
    guest: {runtime: netns, command: [corridor, sample, db, --listen, ":80"]}
    resources: {cpu: 100m, memory: 64Mi}
    ports: [{port: 80}]
  - name: back
    tasks: 1
    placement: {labels: {zone: c}}
    guest: {runtime: netns, command: [corridor, sample, db, --listen, ":80"]}
    resources: {cpu: 100m, memory: 64Mi}
    ports: [{port: 80}]
rules:
  - {from: front, to: back, ports: [80], encrypt: true}
`

// TestPendingPlacedWhenServerUndrained is a pending task on a real lab:
// with the only server its class may run on (s3, zone c) draining, an
// apply is refused unless --allow-pending; allowed, the task is pending
// with its reason (task.pending, `get tasks`) while the rest of the app
// runs; undraining s3 places it there (task.placed), its guest starts,
// its encrypted path is set on both ends and verify passes.
func TestPendingPlacedWhenServerUndrained(t *testing.T) {
	f := upFleet(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := f.c.DrainServer(ctx, "s3", true); err != nil {
		t.Fatal(err)
	}
	app := fmt.Sprintf("pend%d", os.Getpid())
	doc := []byte(fmt.Sprintf(pendingApp, app))
	back := app + "/back/0"

	// Refused whole by default, nothing stored.
	if _, err := f.c.ApplyApp(ctx, doc, api.ApplyOptions{File: "pending.yaml"}); err == nil || !strings.Contains(err.Error(), back) {
		t.Fatalf("apply that makes %s pending: err %v, want a refusal naming it", back, err)
	}
	if tasks, err := f.c.ListTasks(ctx, api.Filter{App: app}); err == nil && len(tasks) > 0 {
		t.Fatalf("a refused apply left tasks: %v", placement(tasks))
	}

	res, err := f.c.ApplyApp(ctx, doc, api.ApplyOptions{File: "pending.yaml", AllowPending: true})
	if err != nil {
		t.Fatalf("apply --allow-pending: %v", err)
	}
	f.own = append(f.own, app)
	if len(res.Pending) != 1 || res.Pending[0].ID != back {
		t.Fatalf("apply --allow-pending reported pending %v, want %s", res.Pending, back)
	}
	ev := waitEvent(t, f.c, "task.pending", "task/"+back, 30*time.Second)
	if !strings.Contains(ev.Message, "zone=c") {
		t.Errorf("task.pending says %q, want the label no ready server carries", ev.Message)
	}
	// The rest of the app runs meanwhile.
	front := waitTask(t, f, app+"/front/0", func(ti api.TaskInfo) bool {
		return ti.Server != "" && ti.Status != nil && ti.Status.State == api.TaskRunning
	})
	pend := waitTask(t, f, back, func(ti api.TaskInfo) bool { return ti.Server == "" && ti.Pending != "" })
	t.Logf("while s3 drains: %s runs on %s; %s pending: %s", front.ID, front.Server, back, pend.Pending)
	if f.lab.GuestNetns(back) != "" {
		t.Errorf("a guest of the pending %s exists", back)
	}

	undrained := time.Now()
	if _, err := f.c.DrainServer(ctx, "s3", false); err != nil {
		t.Fatal(err)
	}
	ev = waitEvent(t, f.c, "task.placed", "task/"+back, 60*time.Second)
	if !strings.HasPrefix(ev.Message, "on s3:") {
		t.Errorf("task.placed says %q, want on s3", ev.Message)
	}
	tasks := f.settle(t, 2)
	for _, ti := range tasks {
		if ti.ID == back && ti.Server != "s3" {
			t.Errorf("%s placed on %s, want s3 (the only zone c server)", back, ti.Server)
		}
	}
	if f.lab.GuestNetnsOn("s3", back) == "" {
		t.Errorf("no guest of %s on s3", back)
	}
	rep := f.verifyWithin(t, app, 30*time.Second)
	t.Logf("undrain -> verify passed: %s (%d checks)", time.Since(undrained).Round(time.Millisecond), len(rep.Checks))
}

// waitTask polls the task list until task satisfies ok, and returns it.
func waitTask(t *testing.T, f *fleet, task string, ok func(api.TaskInfo) bool) api.TaskInfo {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last []api.TaskInfo
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tasks, err := f.c.ListTasks(ctx, api.Filter{})
		cancel()
		if err == nil {
			last = tasks
			for _, ti := range tasks {
				if ti.ID == task && ok(ti) {
					return ti
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s not as expected within 60s: %v", task, placement(last))
	return api.TaskInfo{}
}
