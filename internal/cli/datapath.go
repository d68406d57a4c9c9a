package cli

import (
	"context"
	"errors"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/dataplane/wguser"
)

func init() { register(newDatapathCmd) }

// newDatapathCmd is the hidden "datapath" command: processes the agent
// starts for the data plane, not meant to be run by hand.
func newDatapathCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "datapath",
		Short:   "Data plane helper processes started by the agent",
		Hidden:  true,
		Example: `  corridor datapath wireguard --netns /run/netns/host1 --name corw0 --mtu 1420`,
	}
	cmd.AddCommand(newDatapathWireGuardCmd())
	return cmd
}

func newDatapathWireGuardCmd() *cobra.Command {
	var nsPath, name, logLevel string
	var mtu, procs int
	cmd := &cobra.Command{
		Use:   "wireguard",
		Short: "Serve a userspace WireGuard device (wireguard-go) for a host without kernel WireGuard",
		Long: `Serve a userspace WireGuard device with wireguard-go, configured through its UAPI
socket in /var/run/wireguard/<name>.sock (wgctrl and wg(8) find it there).
The whole process lives in the host's network namespace; the device goes away
when the process ends (SIGTERM or SIGINT). The agent starts one per host.`,
		Example: `  corridor datapath wireguard --netns /run/netns/host1 --name corw-host1 --mtu 1420`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" || len(name) > 15 {
				return errors.New("--name must have 1 to 15 characters")
			}
			if mtu < 576 || mtu > 65535 {
				return errors.New("--mtu must be between 576 and 65535")
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return errors.New("--log-level must be debug, info, warn or error")
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level})).With("device", name)
			if procs < 0 {
				return errors.New("--procs must be 0 (automatic) or more")
			}
			if err := wguser.EnterNetNS(nsPath); err != nil {
				return err
			}
			cpus, inEffect := wguser.SetProcs(procs)
			log.Info("datapath threads", "cpus", cpus, "gomaxprocs", inEffect)
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			// SIGHUP would end us when the agent's terminal goes away; we
			// run in a session of our own and must outlive the agent.
			signal.Ignore(syscall.SIGHUP)
			return wguser.Serve(ctx, name, mtu, log)
		},
	}
	cmd.Flags().StringVar(&nsPath, "netns", "", "network namespace path to run in (default: the current one)")
	cmd.Flags().StringVar(&name, "name", "corw0", "WireGuard device name, unique on the machine")
	cmd.Flags().IntVar(&mtu, "mtu", 1420, "device MTU")
	cmd.Flags().IntVar(&procs, "procs", 0, "threads running Go code (GOMAXPROCS); 0: half the CPUs, at least one, unless the GOMAXPROCS environment variable is set")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}
