package cli

import (
	"context"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/sample"
)

// newSampleHostileCmd is the hidden `corridor sample hostile`: a task
// program that attacks its own guest, for the hostile-guest suite
// (internal/guest/nsguest/hostile_priv_test.go) and for trying a host by
// hand. It is no tier of the sample app.
func newSampleHostileCmd() *cobra.Command {
	var h sample.Hostile
	var forkBomb, fillMemory bool
	cmd := &cobra.Command{
		Use:   "hostile",
		Short: "Attack the guest this runs in, and report what was refused (a test tool)",
		Long: `Tries what a sealed netns guest must not be able to do: read keys and tokens,
open or enter the host's network namespaces, dial WireGuard UAPI sockets, list
or change nftables and links, see or signal processes outside the guest, mount,
make user namespaces, ptrace, open raw or packet sockets. Prints one JSON line
per check ({"check", "refused", "detail"}) and a summary, then waits for
SIGTERM. --fork-bomb starts processes until the pids limit stops it;
--fill-memory allocates until the memory limit kills it.`,
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			h.Out = out
			switch {
			case fillMemory:
				sample.FillMemory(out)
			case forkBomb:
				sample.ForkBomb(out)
			default:
				h.Run()
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			<-ctx.Done()
			fmt.Fprintln(out, "hostile: stopped")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&h.Keys, "key", nil, "a secret file (host path) to try to read; repeatable")
	f.StringSliceVar(&h.Netns, "netns", nil, "a network namespace file of the host to open and enter; repeatable")
	f.StringSliceVar(&h.UAPI, "uapi", nil, "a WireGuard UAPI socket of the host to dial; repeatable")
	f.IntSliceVar(&h.PIDs, "pid", nil, "a host process (agent, server, other task) to signal; repeatable")
	f.BoolVar(&forkBomb, "fork-bomb", false, "start processes until the kernel refuses")
	f.BoolVar(&fillMemory, "fill-memory", false, "allocate memory until killed")
	return cmd
}
