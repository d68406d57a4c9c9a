package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/api"
)

// newServerDrainCmd is `corridor server drain NAME` (drain true) or
// `corridor server undrain NAME`.
func newServerDrainCmd(drain bool) *cobra.Command {
	var cf *clientFlags
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "drain NAME",
		Short: "Drain a server: no new task lands there, and its tasks are placed elsewhere",
		Long: `drain sets a server draining: the controller places no new task there and
places the tasks it runs on other servers, with the same rules as new ones
(each keeps its ID and overlay address). The server's agent then removes
them. "corridor get servers" shows it draining; "corridor server undrain
NAME" makes it ready again (tasks that moved stay where they are).

While the server is up its tasks move make-before-break: a copy starts on
the new server, unreachable; every host holds new connections to the task
and lets the open ones end (at most the agents' --move-grace); every host
then routes to the copy, and the old one stops. A request waits at most
one SYN retry (a second) and is not lost. The server's --move-timeout
bounds each step (a copy that does not start: the task moves in one
step); see docs/operations.md, "Draining a server". With --wait, each
step is shown as it happens.`,
		Example: "  corridor server drain s2 --wait\n  corridor server undrain s2",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			name := args[0]
			var steps moveSteps
			if drain && wait {
				steps.start(cmd.Context(), c)
			}
			s, err := c.DrainServer(cmd.Context(), name, drain)
			if err != nil {
				return explain(err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "server %s: %s (%d tasks placed there)\n", name, s.State, s.Tasks)
			if !drain || !wait {
				return nil
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			for s.Tasks > 0 {
				steps.show(ctx, c, cmd.ErrOrStderr())
				select {
				case <-ctx.Done():
					return fmt.Errorf("server %s still holds %d tasks after %s: is there room elsewhere? (corridor get tasks --server %s; corridor events)", name, s.Tasks, timeout, name)
				case <-time.After(100 * time.Millisecond):
				}
				if s, err = c.GetServer(ctx, name); err != nil && ctx.Err() == nil {
					return explain(err)
				}
			}
			steps.show(ctx, c, cmd.ErrOrStderr())
			_, err = waitSettled(cmd.Context(), c, nil, timeout, cmd.ErrOrStderr())
			return err
		},
	}
	if !drain {
		cmd.Use = "undrain NAME"
		cmd.Short = "Make a draining server ready again: it takes new tasks"
		cmd.Long = ""
		cmd.Example = "  corridor server undrain s2"
	}
	cf = addClientFlags(cmd)
	if drain {
		cmd.Flags().BoolVar(&wait, "wait", false, "wait until the server holds no task and the fleet has settled")
		cmd.Flags().DurationVar(&timeout, "timeout", defaultWaitTimeout, "how long --wait waits")
	}
	return cmd
}

// moveSteps prints the steps of the task moves a drain causes (events
// task.*) as they are recorded, each once.
type moveSteps struct {
	since int64 // events at or before this revision are older than the drain
	seen  map[string]bool
}

// start notes the newest event recorded before the drain.
func (m *moveSteps) start(ctx context.Context, c *api.Client) {
	evs, err := c.ListEvents(ctx, 200)
	if err != nil {
		return
	}
	for _, e := range evs {
		m.since = max(m.since, e.Revision)
	}
}

func (m *moveSteps) show(ctx context.Context, c *api.Client, w io.Writer) {
	evs, err := c.ListEvents(ctx, 200)
	if err != nil {
		return // best effort: the wait goes on without it
	}
	if m.seen == nil {
		m.seen = map[string]bool{}
	}
	slices.SortFunc(evs, func(a, b api.Event) int { return cmp.Compare(a.Revision, b.Revision) })
	for _, e := range evs {
		key := fmt.Sprint(e.Revision, e.Action, e.Object)
		if e.Revision <= m.since || !strings.HasPrefix(e.Action, "task.") || m.seen[key] {
			continue
		}
		m.seen[key] = true
		fmt.Fprintf(w, "  %s %-12s %s\n", strings.TrimPrefix(e.Object, "task/"), strings.TrimPrefix(e.Action, "task."), e.Message)
	}
}
