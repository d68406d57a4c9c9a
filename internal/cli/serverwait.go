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

// waitReadyFlag honours `get servers --wait-ready N [--timeout D]`: it
// first waits until at least N servers have joined and are ready. A script
// that starts agents and then applies an app needs this: an app applied
// before any server joined is refused (nothing fits).
func waitReadyFlag(c *cobra.Command, cl *api.Client) error {
	n, _ := c.Flags().GetInt("wait-ready")
	timeout, _ := c.Flags().GetDuration("timeout")
	if n < 0 {
		return fmt.Errorf("--wait-ready: %d is not a number of servers", n)
	}
	if n == 0 {
		return nil
	}
	return waitReady(c.Context(), cl, n, timeout, c.ErrOrStderr())
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
