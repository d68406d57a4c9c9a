package server

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
)

// Moving tasks off a draining server, make before break
// (docs/architecture.md, "Moving a task: make before break").
//
// A task that leaves a draining server that is still up keeps its ID and
// address, as any moved task, but its old copy runs until the new one is
// started and every host routes to it. The controller runs one move at a
// time, for every task leaving a draining server when it starts, in three
// phases kept in etcd (store.MoveRecord), so that a new leader resumes it:
//
//	stage   the new host runs a staged copy: started, but not routed and
//	        cut off by its host's firewall (hoststate.State.Staged); every
//	        host keeps routing the task to its old copy. Done when the new
//	        hosts report the copies running.
//	hold    every host that routes to the tasks drops new TCP connections
//	        to them (their clients send the SYN again) and lets the open
//	        ones end (hoststate.State.Hold; the agent reports the state
//	        applied when none is left, or after its --move-grace). Done
//	        when every host has applied it: no request is in flight.
//	route   the new hosts route the tasks to their copies (their own
//	        guests reach them at once); every other host still holds. Done
//	        when the new hosts have applied it: a copy is routed on its own
//	        host before any other host sends it a packet, which without
//	        this phase could arrive first and be answered "no route to
//	        host" (a refused connection instead of a held one).
//	switch  every host but the old ones routes the tasks to their new
//	        copies; the held SYNs, sent again, reach them. Done when every
//	        host has applied it; then the old hosts drop the old copies and
//	        the placement records the tasks on their new servers.
//
// Each step is decided by the agents' reports, never by time; a phase not
// done within moveTimeout (an agent that cannot start the copy, a host
// that does not answer) ends the move the old way, in one step.

// Actions of the move events.
const (
	EventTaskMoving  = "task.moving"  // a staged copy starts on the new server
	EventTaskHeld    = "task.held"    // new connections held, open ones ending
	EventTaskMoved   = "task.moved"   // every host routes to the new copy
	EventTaskStopped = "task.stopped" // the old copy is gone: the move is done
	EventTaskMoveCut = "task.move"    // the move could not be made before break
)

// DefaultMoveTimeout bounds each phase of a move.
const DefaultMoveTimeout = 2 * time.Minute

// moveView is what a reconcile writes while a move is under way: the
// host states of the move's phase, and the placement to store (the tasks
// still on their old servers until the move is done).
type moveView struct {
	hosts []compile.HostState
	place *compile.Plan
}

// stepMove looks at the move under way (or starts one when tasks leave a
// draining server) and returns what to write. in is the compile input of
// plan, the fleet after every move.
func (c *controller) stepMove(ctx context.Context, guard []clientv3.Cmp, sn *store.Snapshot, hosts map[string]*store.HostKeys,
	states map[string]string, in compile.Input, plan *compile.Plan) (moveView, error) {
	direct := moveView{hosts: plan.Hosts, place: plan}
	if c.moveTimeout < 0 {
		return direct, nil // make-before-break switched off
	}
	cands := moveCandidates(sn, states, plan)
	if len(cands) == 0 && c.moveChecked && !c.moving.Load() {
		return direct, nil // no move recorded since this leader looked
	}
	rec, err := c.st.GetMove(ctx)
	if err != nil {
		return direct, err
	}
	c.moveChecked = true
	if rec == nil && len(cands) == 0 {
		c.stopMoving()
		return direct, nil
	}
	now := time.Now()
	if rec != nil {
		// A task whose move the fleet no longer wants (its app changed,
		// a server went down or was undrained, the new server changed)
		// leaves the move: it follows plan.
		kept := rec.Tasks[:0:0]
		for _, m := range rec.Tasks {
			if slices.Contains(cands, m) {
				kept = append(kept, m)
			} else {
				c.event(ctx, EventTaskMoveCut, "task/"+m.Task, fmt.Sprintf("move from %s to %s left: the fleet no longer moves it that way", m.From, m.To))
			}
		}
		if len(kept) == 0 {
			if err := c.st.PutMove(ctx, guard, nil); err != nil {
				return direct, err
			}
			rec = nil
			if len(cands) == 0 {
				c.stopMoving()
				return direct, nil
			}
		} else {
			rec.Tasks = kept
		}
	}
	if rec == nil {
		rec = &store.MoveRecord{Phase: store.MoveStage, Started: now.UTC(), Since: now.UTC(), Tasks: cands}
		if err := c.st.PutMove(ctx, guard, rec); err != nil {
			return direct, err
		}
		for _, m := range rec.Tasks {
			c.event(ctx, EventTaskMoving, "task/"+m.Task, fmt.Sprintf("leaving %s (draining): a copy starts on %s, unrouted; the task runs on %s until every host routes to the copy", m.From, m.To, m.From))
		}
		c.log.Info("task move started", "tasks", moveSummary(rec))
	}
	c.moving.Store(true)

	// The fleet before the move (every leaving task kept where it runs)
	// and after it (only this move's tasks moved: tasks leaving another
	// draining server meanwhile wait for the next move).
	batchFrom, waitFrom := map[string]bool{}, map[string]bool{}
	for _, m := range rec.Tasks {
		batchFrom[m.From] = true
	}
	for _, m := range cands {
		if !slices.Contains(rec.Tasks, m) && !batchFrom[m.From] {
			waitFrom[m.From] = true
		}
	}
	oldIn := in
	oldIn.Keep = append(sortedKeys(batchFrom), sortedKeys(waitFrom)...)
	old, err := compile.Compile(oldIn)
	if err != nil {
		return direct, fmt.Errorf("compile the fleet before the move: %w", err)
	}
	next := plan
	if len(waitFrom) > 0 {
		nextIn := in
		nextIn.Keep = sortedKeys(waitFrom)
		if next, err = compile.Compile(nextIn); err != nil {
			return direct, fmt.Errorf("compile the fleet after the move: %w", err)
		}
	}

	// Move on when the phase is done.
	concerned := involved(rec, old, next)
	c.mu.Lock()
	c.moveHosts = concerned
	c.mu.Unlock()
	done, why := c.movePhaseDone(ctx, rec, hosts, states, concerned)
	switch {
	case done && rec.Phase == store.MoveSwitch:
		if err := c.st.PutMove(ctx, guard, nil); err != nil {
			return direct, err
		}
		for _, m := range rec.Tasks {
			c.event(ctx, EventTaskStopped, "task/"+m.Task, fmt.Sprintf("runs on %s only: the copy on %s stops (moved make-before-break in %s)", m.To, m.From, now.Sub(rec.Started).Round(time.Millisecond)))
		}
		c.log.Info("task move done", "tasks", len(rec.Tasks), "took", now.Sub(rec.Started))
		return moveView{hosts: next.Hosts, place: next}, nil
	case done:
		rec.Phase, rec.Since = nextMovePhase(rec.Phase), now.UTC()
		if err := c.st.PutMove(ctx, guard, rec); err != nil {
			return direct, err
		}
		if rec.Phase == store.MoveRoute {
			c.log.Info("task move: the new hosts route the copies", "tasks", moveSummary(rec), "why", why)
		}
		for _, m := range rec.Tasks {
			msg := fmt.Sprintf("%s: new connections to it are held on every host while the open ones end", why)
			action := EventTaskHeld
			switch rec.Phase {
			case store.MoveRoute:
				continue // logged above; the next event is the switch
			case store.MoveSwitch:
				action, msg = EventTaskMoved, fmt.Sprintf("%s: every host but %s routes it to its copy on %s", why, m.From, m.To)
			}
			c.event(ctx, action, "task/"+m.Task, msg)
		}
	case now.Sub(rec.Since) > c.timeoutOfMove():
		if err := c.st.PutMove(ctx, guard, nil); err != nil {
			return direct, err
		}
		for _, m := range rec.Tasks {
			c.event(ctx, EventTaskMoveCut, "task/"+m.Task, fmt.Sprintf("phase %s not done after %s (%s): moved from %s to %s in one step", rec.Phase, c.timeoutOfMove(), why, m.From, m.To))
		}
		c.log.Warn("task move timed out; moving in one step", "phase", rec.Phase, "why", why)
		return moveView{hosts: next.Hosts, place: next}, nil
	}
	c.moveLook.Store(min(rec.Since.Add(c.timeoutOfMove()).UnixNano(), now.Add(moveRecheck).UnixNano()))
	return moveView{hosts: moveStates(rec, old, next), place: old}, nil
}

// moveRecheck is how often the tick looks at a move under way between
// its reports: a report seen before the reconcile that could use it (an
// etcd write racing the watch) is picked up then.
const moveRecheck = 5 * time.Second

// moveDue tells the tick whether to look at the move under way now.
func (c *controller) moveDue(now time.Time) bool {
	return c.moving.Load() && now.UnixNano() >= c.moveLook.Load()
}

// stopMoving records that no move is under way.
func (c *controller) stopMoving() {
	c.moving.Store(false)
	c.mu.Lock()
	c.moveHosts = nil
	c.mu.Unlock()
}

// moveConcerns tells whether a report of host may move the move under way
// on: one of the hosts it concerns reported.
func (c *controller) moveConcerns(host string) bool {
	if !c.moving.Load() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.moveHosts == nil || c.moveHosts[host]
}

func (c *controller) timeoutOfMove() time.Duration {
	if c.moveTimeout > 0 {
		return c.moveTimeout
	}
	return DefaultMoveTimeout
}

func nextMovePhase(p string) string {
	switch p {
	case store.MoveStage:
		return store.MoveHold
	case store.MoveHold:
		return store.MoveRoute
	default:
		return store.MoveSwitch
	}
}

// movePhaseDone tells whether the move's phase is done, and why or, when
// it is not, what it waits for.
func (c *controller) movePhaseDone(ctx context.Context, rec *store.MoveRecord, hosts map[string]*store.HostKeys, states map[string]string, involved map[string]bool) (bool, string) {
	if rec.Phase == store.MoveStage {
		// The new hosts' reports only: reading every host's at each
		// report of a large fleet would be most of the move's cost.
		for _, m := range rec.Tasks {
			st, err := c.st.StatusOf(ctx, m.To)
			if err != nil {
				return false, err.Error()
			}
			if st == nil || !slices.ContainsFunc(st.Status.Tasks, func(t api.TaskStatus) bool {
				return t.Task == m.Task && t.State == api.TaskRunning
			}) {
				return false, fmt.Sprintf("the copy of %s on %s is not running yet", m.Task, m.To)
			}
		}
		return true, "its copy runs"
	}
	// hold and switch: every host of the move that is up has applied its
	// state (a host the move does not concern, broken or slow, does not
	// hold it back).
	names := make([]string, 0, len(involved))
	for name := range involved {
		if hosts[name] != nil {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		h := hosts[name]
		switch states[name] {
		case "", spec.ServerDown, api.ServerRevoked:
			continue
		}
		if h.Desired == nil {
			continue
		}
		if applied := c.hub.view(name).AppliedRevision; applied < h.DesiredRevision {
			return false, fmt.Sprintf("%s has not applied revision %d yet", name, h.DesiredRevision)
		}
	}
	switch rec.Phase {
	case store.MoveHold:
		return true, "no connection left to it in flight"
	case store.MoveRoute:
		return true, "the new hosts route to their copies"
	}
	return true, "every host routes to the copy"
}

// moveCandidates are the tasks plan moves off a draining server that is
// still up, sorted by task.
func moveCandidates(sn *store.Snapshot, states map[string]string, plan *compile.Plan) []store.MoveTask {
	where := map[string]string{}
	for _, p := range sn.Placement {
		for _, t := range p.Tasks {
			where[t.ID] = t.Server
		}
	}
	var out []store.MoveTask
	for t := range plan.Tasks.All() {
		from := where[t.ID]
		if from == "" || from == t.Server || states[from] != spec.ServerDraining || states[t.Server] == spec.ServerDown {
			continue
		}
		out = append(out, store.MoveTask{Task: t.ID, From: from, To: t.Server, Address: t.Address})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Task < out[j].Task })
	return out
}

// moveStates are the host states of rec's phase, from the fleet before
// the move (old) and after it (next), which list the same hosts in the
// same order.
func moveStates(rec *store.MoveRecord, old, next *compile.Plan) []compile.HostState {
	from := map[string]bool{}
	addrs := make([]netip.Addr, 0, len(rec.Tasks))
	for _, m := range rec.Tasks {
		from[m.From] = true
		addrs = append(addrs, m.Address)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	to := map[string]bool{}
	for _, m := range rec.Tasks {
		to[m.To] = true
	}
	out := make([]compile.HostState, len(old.Hosts))
	for i, hs := range old.Hosts {
		switch {
		case rec.Phase == store.MoveSwitch && !from[hs.Host]:
			out[i] = next.Hosts[i]
			continue
		case rec.Phase == store.MoveRoute && to[hs.Host] && !from[hs.Host]:
			// The state after the move, still holding every moving
			// task it routes or runs: its own copies too, since a SYN
			// that arrived while this host's routes change would be
			// refused, not held. The switch then only lifts the hold.
			hs = next.Hosts[i]
			if held := mentioned(hs, addrs); len(held) > 0 {
				hs.Hold, hs.Schema = held, hoststate.SchemaMove
			}
			out[i] = hs
			continue
		}
		// Staged copies of the tasks moving here, as the fleet after the
		// move has them.
		for _, m := range rec.Tasks {
			if m.To != hs.Host {
				continue
			}
			if j := slices.IndexFunc(next.Hosts[i].Guests, func(g compile.Guest) bool { return g.Task == m.Task }); j >= 0 {
				hs.Staged = append(slices.Clip(hs.Staged), next.Hosts[i].Guests[j])
			}
		}
		if rec.Phase != store.MoveStage {
			hs.Hold = mentioned(hs, addrs)
		}
		if len(hs.Staged) > 0 || len(hs.Hold) > 0 {
			hs.Schema = hoststate.SchemaMove
		}
		out[i] = hs
	}
	return out
}

// involved are the hosts a move concerns: those it leaves and reaches,
// and those whose state before or after it routes, runs or publishes one
// of its tasks.
func involved(rec *store.MoveRecord, old, next *compile.Plan) map[string]bool {
	out := map[string]bool{}
	addrs := make([]netip.Addr, 0, len(rec.Tasks))
	for _, m := range rec.Tasks {
		out[m.From], out[m.To] = true, true
		addrs = append(addrs, m.Address)
	}
	for _, p := range []*compile.Plan{old, next} {
		for _, hs := range p.Hosts {
			if len(mentioned(hs, addrs)) > 0 {
				out[hs.Host] = true
			}
		}
	}
	return out
}

// routesTo reports whether st routes to a (its route groups expanded).
func routesTo(st *compile.HostState, a netip.Addr) bool {
	for r := range st.EachRoute() {
		if r.Dest == a {
			return true
		}
	}
	return false
}

// mentioned are the addresses of addrs that st routes, runs or publishes.
func mentioned(st compile.HostState, addrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if slices.ContainsFunc(st.Guests, func(g compile.Guest) bool { return g.Address == a }) ||
			routesTo(&st, a) ||
			slices.ContainsFunc(st.Ingress, func(e hoststate.IngressEntry) bool {
				return slices.ContainsFunc(e.Backends, func(b hoststate.Backend) bool { return b.Address == a })
			}) {
			out = append(out, a)
		}
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// moveSummary names a move's tasks, for logs.
func moveSummary(rec *store.MoveRecord) string {
	parts := make([]string, len(rec.Tasks))
	for i, m := range rec.Tasks {
		parts[i] = fmt.Sprintf("%s %s->%s", m.Task, m.From, m.To)
	}
	return strings.Join(parts, ", ")
}
