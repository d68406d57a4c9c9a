package compile

import (
	"errors"
	"fmt"
	"slices"
)

// Pending tasks.
//
// With Input.Pending, a task that fits on no server does not fail the
// compile: placeTask leaves it without a server and records why (pend),
// and every other task is placed as usual. Such a task still gets an
// address (it keeps the one it had, so that it comes back where its peers
// expect it), and its address stays in its class's address list: the
// CORRIDOR_PEERS_* variables of its peers and the firewall rules do not
// change while it is pending, so that no peer is restarted when it goes
// pending or comes back. It has no guest, no route, no WireGuard peer, no
// VXLAN entry and no path: setAside takes it out of the task lists that
// those are derived from, and a packet to its address meets the hosts'
// unreachable routes. Its Assignment in the next compile's Current has no
// Server, and keep then tries to place it again like a moved task ("was
// pending"), with the same spreading rules: a server that joins, comes
// back up or frees room takes it at the next compile.

// pend makes task ti pending with the reason err gives, or returns err
// when pending tasks are not allowed.
func (p *placer) pend(a *app, cl *class, ti int32, err error) error {
	c := p.c
	if !c.allowPending {
		return err
	}
	var pe *PlacementError
	if !errors.As(err, &pe) {
		return err
	}
	c.tasks[ti].why = pe.Why()
	c.pending = append(c.pending, ti)
	return nil
}

// Why is the reason a task is pending: what it needs and what came
// closest, or why no server was even considered.
func (e *PlacementError) Why() string {
	need := fmt.Sprintf("needs cpu %s, memory %s", fmtCPU(int64(e.Need.CPU)), fmtBytes(int64(e.Need.Memory)))
	if e.Closest == "" {
		return e.NoCandidate + " (" + need + ")"
	}
	short := ""
	if d := int64(e.Need.CPU) - int64(e.Free.CPU); d > 0 {
		short += "cpu " + fmtCPU(d)
	}
	if d := int64(e.Need.Memory) - int64(e.Free.Memory); d > 0 {
		if short != "" {
			short += ", "
		}
		short += "memory " + fmtBytes(d)
	}
	return fmt.Sprintf("no server fits: %s; the closest, %s, has cpu %s, memory %s free (short %s)",
		need, e.Closest, fmtCPU(int64(e.Free.CPU)), fmtBytes(int64(e.Free.Memory)), short)
}

// setAside takes the pending tasks out of their class's and app's task
// lists, once addresses are assigned and the classes' address lists made:
// hosts, routes and paths are derived from the placed tasks alone.
func (c *compiler) setAside() {
	if len(c.pending) == 0 {
		return
	}
	placed := func(ti int32) bool { return c.tasks[ti].server >= 0 }
	for _, a := range c.apps {
		if !slices.ContainsFunc(a.tasks, func(ti int32) bool { return !placed(ti) }) {
			continue
		}
		for _, ti := range a.tasks {
			if !placed(ti) {
				a.pending = append(a.pending, ti)
			}
		}
		a.tasks = slices.DeleteFunc(slices.Clone(a.tasks), func(ti int32) bool { return !placed(ti) })
		for _, cl := range a.classes {
			cl.tasks = slices.DeleteFunc(slices.Clone(cl.tasks), func(ti int32) bool { return !placed(ti) })
		}
	}
}

// pendingTasks lists the pending tasks in plan order (app, class name,
// index); nil when there is none.
func (c *compiler) pendingTasks() []Task {
	if len(c.pending) == 0 {
		return nil
	}
	out := make([]Task, 0, len(c.pending))
	for _, a := range c.apps {
		for _, ti := range a.pending {
			t := &c.tasks[ti]
			out = append(out, Task{ID: t.id, App: a.name, Class: t.class.name, Index: t.index,
				Address: t.addr, Pending: t.why})
		}
	}
	return out
}
