package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
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

A task moves break-before-make: its old copy is removed as its new one
starts, a gap of about a second for that task; see docs/operations.md.`,
		Example: "  corridor server drain s2 --wait\n  corridor server undrain s2",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			name := args[0]
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
				select {
				case <-ctx.Done():
					return fmt.Errorf("server %s still holds %d tasks after %s: is there room elsewhere? (corridor get tasks --server %s; corridor events)", name, s.Tasks, timeout, name)
				case <-time.After(100 * time.Millisecond):
				}
				if s, err = c.GetServer(ctx, name); err != nil && ctx.Err() == nil {
					return explain(err)
				}
			}
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
