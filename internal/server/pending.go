package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/store"
)

// Pending tasks: tasks no server can take now (too little room, no ready
// server with the class's labels). The controller's compile never fails
// for them (compileInput sets compile.Input.Pending): they are stored in
// the app's placement (store.AppPlacement.Pending), shown by the task
// views with their reason, announced by events and counted by a metric,
// and placed at the first compile that finds room. An apply that would
// make tasks pending is refused unless the request allows it
// (api.HeaderAllowPending): see docs/operations.md, "When there is too
// little room", for why.

// Actions of the events the controller records when tasks go pending or
// leave it.
const (
	EventTaskPending = "task.pending" // no server can take the task now
	EventTaskPlaced  = "task.placed"  // a pending task got a server
)

// maxTaskEvents caps the task.pending and task.placed events of one
// compile: a host loss on a full fleet may leave thousands of tasks
// pending; the rest are counted in one more event.
const maxTaskEvents = 20

// wasPending is the pending tasks of the stored placement, by ID.
func wasPending(sn *store.Snapshot) map[string]compile.Task {
	out := map[string]compile.Task{}
	for _, p := range sn.Placement {
		for _, t := range p.Pending {
			out[t.ID] = t
		}
	}
	return out
}

// notePending records task.pending for each task pending in plan that was
// not pending in the snapshot's placement (the one plan replaces), and
// task.placed for each that was and now has a server; and sets the
// pending metric.
func (c *controller) notePending(ctx context.Context, sn *store.Snapshot, plan *compile.Plan) {
	c.m.pending.Set(float64(len(plan.Pending)))
	was := wasPending(sn)
	var pend, placed []string
	for _, t := range plan.Pending {
		if _, ok := was[t.ID]; ok {
			continue
		}
		if len(pend) < maxTaskEvents {
			c.log.Warn("task pending", "task", t.ID, "why", t.Pending)
			c.event(ctx, EventTaskPending, "task/"+t.ID, t.Pending)
		}
		pend = append(pend, t.ID)
	}
	for t := range plan.Tasks.All() {
		if _, ok := was[t.ID]; !ok {
			continue
		}
		if len(placed) < maxTaskEvents {
			c.log.Info("pending task placed", "task", t.ID, "server", t.Server)
			c.event(ctx, EventTaskPlaced, "task/"+t.ID, "on "+t.Server+": "+t.Reason.Chosen)
		}
		placed = append(placed, t.ID)
	}
	if n := len(pend) - maxTaskEvents; n > 0 {
		c.event(ctx, EventTaskPending, "", fmt.Sprintf("%d more tasks pending: %s", n, strings.Join(pend[maxTaskEvents:], ", ")))
	}
	if n := len(placed) - maxTaskEvents; n > 0 {
		c.event(ctx, EventTaskPlaced, "", fmt.Sprintf("%d more pending tasks placed: %s", n, strings.Join(placed[maxTaskEvents:], ", ")))
	}
}

// pendingRefusal is the error of an apply that makes tasks pending that
// are not pending now; nil if it makes none. Tasks already pending (after
// a host loss) do not hold an apply back: refusing it would not give them
// room, and might keep the operator from the change that does.
func pendingRefusal(sn *store.Snapshot, plan *compile.Plan) error {
	was := wasPending(sn)
	var lines []string
	for _, t := range plan.Pending {
		if _, ok := was[t.ID]; !ok {
			lines = append(lines, "task "+t.ID+" would be pending: "+t.Pending)
		}
	}
	if len(lines) == 0 {
		return nil
	}
	lines = append(lines, "add capacity, lower the request or fix the labels; or apply with --allow-pending to store the apps anyway: their tasks wait, pending, until a server has room")
	return fail(http.StatusUnprocessableEntity, "the apps do not fit on the current servers; nothing was stored", lines...)
}

// pendingOf is the pending tasks of plan that belong to the apps of in.
func pendingOf(plan *compile.Plan, in []incoming) []compile.Task {
	var out []compile.Task
	for _, t := range plan.Pending {
		for _, a := range in {
			if a.app.Name == t.App {
				out = append(out, t)
				break
			}
		}
	}
	return out
}

// pendingChanges are a dry run's pending tasks as plan changes: "pending"
// for a task that is not pending now, with the reason.
func pendingChanges(sn *store.Snapshot, plan *compile.Plan) []api.PlanChange {
	was := wasPending(sn)
	var out []api.PlanChange
	for _, t := range plan.Pending {
		if _, ok := was[t.ID]; !ok {
			out = append(out, api.PlanChange{Kind: "task", Name: t.ID, Action: "pending", Detail: t.Pending})
		}
	}
	return out
}

// allowPendingHeader says whether the request accepts pending tasks.
func allowPendingHeader(r *http.Request) bool {
	return r.Header.Get(api.HeaderAllowPending) == "true"
}
