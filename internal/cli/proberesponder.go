package cli

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/probe"
)

func init() { register(newProbeResponderCmd) }

// newProbeResponderCmd is the hidden command a VM guest's init runs: it
// answers the host agent's verify probes over the guest's probe port.
func newProbeResponderCmd() *cobra.Command {
	var device string
	cmd := &cobra.Command{
		Use:   "probe-responder --device /dev/vportNpM",
		Short: "Inside a VM guest: run the host's verify probes from the guest (started by the guest image's init)",
		Long: `probe-responder reads probe requests (one JSON object a line) from the guest's
virtio-serial port named corridor.probe, dials them from the guest's own eth0
with the marker, and writes each result back. The guest image's init starts
it when the image carries corridor (corridor image build --with-sample).`,
		Example: "  corridor probe-responder --device /dev/vport1p1",
		Hidden:  true,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if device == "" {
				return errors.New("--device is required")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			// The port reads end-of-file while the host end is not
			// connected: open it again and wait for the next request.
			for ctx.Err() == nil {
				f, err := os.OpenFile(device, os.O_RDWR, 0)
				if err != nil {
					return fmt.Errorf("open probe port: %w", err)
				}
				err = probe.Serve(ctx, f)
				f.Close()
				if err != nil && ctx.Err() == nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "probe-responder:", err)
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&device, "device", "", "the guest's probe port device")
	return cmd
}
