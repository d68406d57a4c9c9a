package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

// addReadyWait gives `get servers` --wait-ready N and --timeout: it first
// waits until at least N servers have joined and are ready, then lists
// them. A script that starts agents and then applies an app needs this:
// an app applied before any server joined is refused (nothing fits).
func addReadyWait(get *cobra.Command) {
	servers, _, err := get.Find([]string{"servers"})
	if err != nil || servers == get {
		panic("cli: get has no servers subcommand")
	}
	var n int
	var timeout time.Duration
	servers.Flags().IntVar(&n, "wait-ready", 0, "first wait until at least this many servers are ready")
	servers.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long --wait-ready waits")
	list := servers.RunE
	servers.RunE = func(c *cobra.Command, args []string) error {
		if n < 0 {
			return fmt.Errorf("--wait-ready: %d is not a number of servers", n)
		}
		if n > 0 {
			cf := clientFlagsOf(c)
			cl, err := cf.client()
			if err != nil {
				return err
			}
			if err := waitReady(c.Context(), cl, n, timeout, c.ErrOrStderr()); err != nil {
				return explain(err)
			}
		}
		return list(c, args)
	}
}

// clientFlagsOf reads back the client flags that addClientFlags gave c.
func clientFlagsOf(c *cobra.Command) *clientFlags {
	get := func(name string) string {
		if f := c.Flags().Lookup(name); f != nil {
			return f.Value.String()
		}
		return ""
	}
	return &clientFlags{server: get("server"), token: get("token"), ca: get("ca")}
}

// waitReady polls the server list until n servers are ready, saying on
// talk how many are, and which are not yet, when that changes.
func waitReady(ctx context.Context, cl *api.Client, n int, timeout time.Duration, talk io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start, shown := time.Now(), ""
	for {
		ss, err := cl.ListServers(ctx)
		var ready, other []string
		if err == nil {
			for _, s := range ss {
				if s.State == spec.ServerReady {
					ready = append(ready, s.Spec.Name)
				} else {
					other = append(other, s.Spec.Name+" "+s.State)
				}
			}
			sort.Strings(ready)
			if len(ready) >= n {
				fmt.Fprintf(talk, "%d servers ready (%s) after %s\n", len(ready), strings.Join(ready, ", "), time.Since(start).Round(100*time.Millisecond))
				return nil
			}
			line := fmt.Sprintf("waiting for %d servers to be ready: %d ready", n, len(ready))
			if len(other) > 0 {
				line += "; not yet: " + strings.Join(other, ", ")
			}
			if line != shown {
				fmt.Fprintln(talk, line)
				shown = line
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("servers not ready within %s: %w", timeout, err)
			}
			return &exitError{code: 1, err: fmt.Errorf("only %d of %d servers ready within %s (%s); check the agents' logs", len(ready), n, timeout, shown)}
		case <-time.After(200 * time.Millisecond):
		}
	}
}
