// Package settle waits, over the API client, until a fleet has settled:
// every task the apps' specs ask for is placed and running, every
// server's agent (but those of servers down that hold no task) has applied its latest
// desired state without errors,
// and every encrypted path between two servers has had a WireGuard
// handshake, as the agents report it.
//
// Pending tasks (no server can take them now: compile.Task.Pending) are
// not waited for: they leave pending only when the fleet changes (a
// server joins, comes back or frees room), which waiting does not bring.
// Wait returns a *PendingError listing them as soon as everything else
// has settled.
//
// It is the one definition of "settled" in Corridor: `corridor apply
// --wait`, `corridor demo`, the end-to-end and lab tests and the
// benchmarks all call Wait.
package settle

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Client is the part of the API client that Wait reads (*api.Client
// implements it).
type Client interface {
	ListApps(ctx context.Context) ([]api.App, error)
	ListServers(ctx context.Context) ([]api.Server, error)
	ListTasks(ctx context.Context, f api.Filter) ([]api.TaskInfo, error)
	ListPaths(ctx context.Context, f api.Filter) ([]api.PathInfo, error)
}

// Options says what to wait for.
type Options struct {
	// Apps limits the tasks and paths waited for to these apps (an app
	// that does not exist, or no longer does, must have no task left);
	// empty means every app. Servers are always all of them, except
	// those removed by an operator.
	Apps []string
	// NoHandshakes leaves encrypted paths out: tasks and hosts only.
	NoHandshakes bool
	// Interval is the time between two looks; 0 means 250ms.
	Interval time.Duration
	// Progress, if set, is called with each state whose Summary differs
	// from the previous one, and with the last state.
	Progress func(State)
}

// State is what one look at the fleet found.
type State struct {
	// Tasks are the placed tasks of the apps waited for, as last listed.
	Tasks []api.TaskInfo
	// Pending are their tasks no server can take now, with the reason
	// (Task.Pending). They do not keep a state from being settled.
	Pending []api.TaskInfo
	// Want is the number of tasks the apps' specs ask for; Running how
	// many of the placed tasks run.
	Want, Running int
	// Servers is the number of servers looked at; Applied how many of
	// them applied their latest desired state without error.
	Servers, Applied int
	// Encrypted is the number of encrypted paths between two servers;
	// Handshaken how many of them had a WireGuard handshake.
	Encrypted, Handshaken int
	// Unsettled says what is not settled yet, one line each, sorted;
	// empty once settled.
	Unsettled []string
}

// Settled tells whether nothing is left to wait for.
func (s State) Settled() bool { return len(s.Unsettled) == 0 }

// Summary is one line of counts: what is waited for and how far it got.
func (s State) Summary() string {
	line := fmt.Sprintf("%d/%d tasks running, %d/%d hosts applied their state", s.Running, s.Want, s.Applied, s.Servers)
	if s.Encrypted > 0 {
		line += fmt.Sprintf(", %d/%d encrypted paths handshaken", s.Handshaken, s.Encrypted)
	}
	if len(s.Pending) > 0 {
		line += fmt.Sprintf(", %d tasks pending", len(s.Pending))
	}
	return line
}

// NotSettledError is Wait's error when its context ends first: the last
// state seen, and the context's error.
type NotSettledError struct {
	State State
	Err   error
}

func (e *NotSettledError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "not settled (%s): %v", e.State.Summary(), e.Err)
	const most = 20
	for i, u := range e.State.Unsettled {
		if i == most {
			fmt.Fprintf(&b, "\n  ... and %d more", len(e.State.Unsettled)-most)
			break
		}
		b.WriteString("\n  ")
		b.WriteString(u)
	}
	return b.String()
}

func (e *NotSettledError) Unwrap() error { return e.Err }

// PendingError is Wait's error when everything has settled but tasks are
// pending: no server can take them now, and waiting will not change that.
type PendingError struct {
	State State
}

func (e *PendingError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "settled, but %d tasks are pending: no server can take them now (%s); they are placed when a server joins, comes back up or frees room", len(e.State.Pending), e.State.Summary())
	const most = 20
	for i, t := range e.State.Pending {
		if i == most {
			fmt.Fprintf(&b, "\n  ... and %d more", len(e.State.Pending)-most)
			break
		}
		fmt.Fprintf(&b, "\n  task %s: %s", t.ID, t.Pending)
	}
	return b.String()
}

// Wait looks at the fleet every opts.Interval until it has settled, and
// returns that state; with a *PendingError if tasks are pending then. If ctx ends first, it returns the last state and a
// *NotSettledError that lists what is still unsettled. Failed list calls
// (a server restarting) count as unsettled and are tried again.
func Wait(ctx context.Context, c Client, opts Options) (State, error) {
	every := opts.Interval
	if every <= 0 {
		every = 250 * time.Millisecond
	}
	var st State
	last := ""
	for looked := false; ; looked = true {
		cur := Check(ctx, c, opts)
		if ctx.Err() != nil {
			// The look was cut short: report the one before, if any.
			if !looked {
				st = cur
			}
			break
		}
		st = cur
		if opts.Progress != nil && (st.Summary() != last || st.Settled()) {
			opts.Progress(st)
			last = st.Summary()
		}
		if st.Settled() {
			if len(st.Pending) > 0 {
				return st, &PendingError{State: st}
			}
			return st, nil
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
			continue
		}
		break
	}
	if opts.Progress != nil {
		opts.Progress(st)
	}
	return st, &NotSettledError{State: st, Err: ctx.Err()}
}

// Check looks at the fleet once.
func Check(ctx context.Context, c Client, opts Options) State {
	var st State
	fail := func(what string, err error) State {
		st.Unsettled = append(st.Unsettled, fmt.Sprintf("%s: %v", what, err))
		return st
	}
	inScope := func(app string) bool { return len(opts.Apps) == 0 || slices.Contains(opts.Apps, app) }

	apps, err := c.ListApps(ctx)
	if err != nil {
		return fail("list apps", err)
	}
	servers, err := c.ListServers(ctx)
	if err != nil {
		return fail("list servers", err)
	}
	tasks, err := c.ListTasks(ctx, api.Filter{})
	if err != nil {
		return fail("list tasks", err)
	}
	var paths []api.PathInfo
	if !opts.NoHandshakes {
		// One entry per server pair, counting its paths: an app of two
		// classes of 500 tasks has 250,000 paths, and this runs four
		// times a second.
		if paths, err = c.ListPaths(ctx, api.Filter{ServerPairs: true}); err != nil {
			return fail("list paths", err)
		}
	}
	var un []string

	// Tasks: placed as the specs ask, and running.
	want := map[string]bool{}
	for _, a := range apps {
		if !inScope(a.Name) {
			continue
		}
		for _, cl := range a.Spec.Classes {
			for i := range cl.Tasks {
				want[fmt.Sprintf("%s/%s/%d", a.Name, cl.Name, i)] = true
			}
		}
	}
	st.Want = len(want)
	placed := map[string]bool{}
	for _, t := range tasks {
		if !inScope(t.App) {
			continue
		}
		if t.Pending != "" {
			if want[t.ID] {
				st.Pending = append(st.Pending, t)
				placed[t.ID] = true
			}
			continue
		}
		st.Tasks = append(st.Tasks, t)
		placed[t.ID] = true
		switch {
		case !want[t.ID]:
			un = append(un, fmt.Sprintf("task %s: placed, but its app no longer asks for it", t.ID))
		case t.Status == nil:
			un = append(un, fmt.Sprintf("task %s on %s: no status reported yet", t.ID, t.Server))
		case t.Status.State != api.TaskRunning:
			line := fmt.Sprintf("task %s on %s: %s", t.ID, t.Server, t.Status.State)
			if t.Status.Message != "" {
				line += " (" + t.Status.Message + ")"
			}
			un = append(un, line)
		default:
			st.Running++
		}
	}
	for id := range want {
		if !placed[id] {
			un = append(un, fmt.Sprintf("task %s: not placed yet", id))
		}
	}

	// Hosts: the latest desired state applied, without errors. A server
	// that is down and holds no task any more cannot apply anything and
	// need not: its tasks were placed elsewhere, which the tasks above
	// wait for.
	holds := map[string]bool{}
	for _, t := range tasks {
		holds[t.Server] = true
	}
	for _, s := range servers {
		if s.State == api.ServerRevoked || s.State == spec.ServerDown && !holds[s.Spec.Name] {
			continue
		}
		st.Servers++
		name := s.Spec.Name
		switch {
		case s.DesiredRevision == 0:
			un = append(un, fmt.Sprintf("server %s (%s): no desired state yet", name, s.State))
		case s.AppliedRevision < s.DesiredRevision:
			un = append(un, fmt.Sprintf("server %s (%s): applied revision %d of %d", name, s.State, s.AppliedRevision, s.DesiredRevision))
		case len(s.Errors) > 0:
			un = append(un, fmt.Sprintf("server %s: applied revision %d with errors: %s", name, s.AppliedRevision, strings.Join(s.Errors, "; ")))
		default:
			st.Applied++
		}
	}

	// Encrypted paths between two servers: a handshake done.
	for _, p := range paths {
		if !inScope(p.App) || !p.Encrypt || p.Local {
			continue
		}
		n := max(p.Count, 1) // 0 from a server that lists every path
		st.Encrypted += n
		if p.HandshakeAge >= 0 {
			st.Handshaken += n
			continue
		}
		what := fmt.Sprintf("path %s -> %s", p.From, p.To)
		if n > 1 {
			what = fmt.Sprintf("%d paths of %s (%s -> %s, ...)", n, p.App, p.From, p.To)
		}
		un = append(un, fmt.Sprintf("%s: no WireGuard handshake yet between %s and %s", what, p.FromServer, p.ToServer))
	}
	sort.Strings(un)
	st.Unsettled = un
	return st
}
