package cli

import (
	"github.com/corridor-dev/corridor/internal/artifact"
	"maps"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/dataplane"
	"github.com/corridor-dev/corridor/internal/guest/vm"
	"github.com/corridor-dev/corridor/internal/image"
)

func init() { register(newAgentCmd) }

func newAgentCmd() *cobra.Command {
	var (
		cfg           agent.HostConfig
		labels, label map[string]string
		cleanup       bool
		flowOffload   bool
		logLevel      string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the host agent: join the cluster, apply this host's desired state, report status",
		Long: `agent runs on every server until SIGINT or SIGTERM. On first start it makes the
host's WireGuard key and a TLS key, joins the cluster with the join token (the
server signs its CSR) and keeps key, certificate and CA in the state directory
(keys mode 0600); later starts need no token.

It long-polls the host's desired state, writes it to STATE_DIR/desired.json
before applying it, and drives guests and the data plane (WireGuard, VXLAN,
routes, nftables) to it, again every 30 s to repair drift. At start it applies
the stored state at once, even when the server is unreachable: a server outage
changes nothing on the host. Stopping the agent leaves guests and data plane
running; --cleanup removes them.

The control channel to the server must run on the underlay: the agent refuses
to start when the route to the server goes through the WireGuard or VXLAN
device it configures (a broken tunnel could then never be repaired).

The local API on --listen (mTLS: only the cluster CA's "corridor-server"
certificate) serves the server's proxied requests: task logs, path probes for
` + "`corridor verify`" + `, status and Prometheus metrics.

--metrics-listen ADDR serves /metrics alone in plain HTTP, for a Prometheus
that scrapes the agent directly (off by default; docs/metrics.md).`,
		Example: `  # first start: join with the token from the server's data directory
  corridor agent --server https://10.0.0.1:7443 --join-token-file /etc/corridor/join.token \
    --ca /etc/corridor/ca.crt --labels zone=a,rack=r1

  # a lab server in a network namespace, with its own state and device name
  ip netns exec lab-s1 corridor agent --server https://198.18.0.1:7443 --join-token-file join.token \
    --ca ca.crt --name s1 --state-dir /var/lib/lab/s1 --underlay-iface eth0 --wg-name corw-s1

  # remove every guest, device and rule the agent made on this host (the
  # WireGuard device is the one recorded in the state directory)
  ip netns exec lab-s1 corridor agent --cleanup --state-dir /var/lib/lab/s1

  # flags from a file (keys are the flag names; the command line wins), as
  # the package's corridor-agent.service does
  corridor agent --config /etc/corridor/agent.yaml`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return configFile(cmd, "cleanup")
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := levelLogger(cmd, logLevel)
			if err != nil {
				return err
			}
			cfg.Logger = log
			cfg.NoFlowOffload = !flowOffload
			cfg.Labels = map[string]string{}
			maps.Copy(cfg.Labels, labels)
			maps.Copy(cfg.Labels, label)
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			if cleanup {
				if !cmd.Flags().Changed("wg-name") {
					cfg.WireGuardName = "" // the one the agent recorded
				}
				return agent.CleanupHost(ctx, cfg)
			}
			return agent.RunHost(ctx, cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&cfg.Servers, "server", nil, "control-plane server URL, https://HOST:PORT, on the underlay (required); several, comma-separated or repeated, for a control plane of several servers: the agent fails over between them")
	fl.StringVar(&cfg.JoinToken, "join-token", "", "join token (first start only)")
	fl.StringVar(&cfg.JoinTokenFile, "join-token-file", "", "file holding the join token (first start only)")
	fl.StringVar(&cfg.CAFile, "ca", "", "the cluster CA certificate, to trust the server at join: the server's DATA_DIR/ca.crt")
	fl.DurationVar(&cfg.JoinTimeout, "join-timeout", agent.DefaultJoinTimeout, "give up joining after this long, saying why (0: keep trying)")
	fl.StringVar(&cfg.Name, "name", "", "server name (default: the host name)")
	fl.StringVar(&cfg.GuestScope, "guest-scope", "", "scope of the guests' machine-wide names, network namespace cor-SCOPE.APP-CLASS-N and cgroup (default: the server name); guests already made keep their names")
	fl.StringVar(&cfg.StateDir, "state-dir", agent.DefaultStateDir, "state directory: keys, certificate, desired state, guests")
	fl.StringVar(&cfg.UnderlayIface, "underlay-iface", "", "underlay interface (default: the one holding the default route)")
	fl.StringVar(&cfg.Address, "address", "", "underlay address (default: the underlay interface's address)")
	fl.StringVar(&cfg.CPU, "cpu", "", `CPU capacity offered to tasks, e.g. "4" or "3500m" (default: the machine's CPUs)`)
	fl.StringVar(&cfg.Memory, "memory", "", `memory capacity offered to tasks, e.g. "8Gi" (default: the machine's memory)`)
	fl.StringToStringVar(&labels, "labels", nil, "server labels, e.g. zone=a,rack=r1")
	fl.StringToStringVar(&label, "label", nil, "one server label KEY=VALUE (repeatable)")
	fl.IntVar(&cfg.WireGuardPort, "wireguard-port", compile.DefaultWireGuardPort, "UDP port of the WireGuard device")
	fl.StringVar(&cfg.WireGuardName, "wg-name", dataplane.DefaultWireGuardName, "WireGuard device name (unique on the machine when several agents share it)")
	fl.BoolVar(&cfg.WireGuardUserspace, "wireguard-userspace", false, "use wireguard-go even where the kernel has WireGuard")
	fl.IntVar(&cfg.WireGuardProcs, "wireguard-procs", 0, "threads running wireguard-go's Go code (its GOMAXPROCS) where WireGuard runs in user space; 0: half the CPUs, at least one (it shares them with the kernel's forwarding of the same packets)")
	fl.BoolVar(&flowOffload, "flow-offload", true, "where the kernel has nftables flowtables, let established plain flows skip the forwarding path (the firewall's checks made, and made again on every policy change; see docs/operations.md)")
	fl.StringVar(&cfg.Listen, "listen", ":7444", `local API address (mTLS); "" disables it`)
	fl.StringVar(&cfg.MetricsListen, "metrics-listen", "", `plain-HTTP address serving only /metrics for Prometheus, e.g. 127.0.0.1:9464 (default: off; see docs/metrics.md)`)
	fl.BoolVar(&cleanup, "cleanup", false, "remove every guest, device, rule and cgroup the agent made on this host (found through --state-dir), then exit; non-zero, naming them, when some are left")
	fl.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&cfg.VMImage, "vm-image", image.DefaultOut, "guest image for vm tasks that name no kernel or image (made by 'corridor image build --with-sample')")
	fl.StringVar(&cfg.KVM, "kvm", vm.KVMAuto, "KVM for vm guests: auto (a probe boot decides), on or off (TCG)")
	fl.DurationVar(&cfg.RepairInterval, "repair-interval", agent.DefaultRepairInterval, "how often the host's state is checked against the desired state and drift repaired")
	fl.DurationVar(&cfg.StatusInterval, "status-interval", agent.DefaultStatusInterval, "time between two status reports (heartbeats); keep it well under the server's --heartbeat-timeout")
	fl.Int64Var(&cfg.ArtifactMaxSize, "artifact-max-size", artifact.DefaultMaxSize, "largest task program (artifact) this agent downloads, in bytes")
	fl.DurationVar(&cfg.ArtifactUnusedFor, "artifact-unused-for", artifact.DefaultUnusedFor, "remove a cached artifact once no task has used it for this long")
	fl.IntVar(&cfg.MaxStarting, "max-starting", 0, "guests started at once, each holding its turn until it is ready; more wait (default: four times the CPUs, at least 8; -1: no bound)")
	fl.DurationVar(&cfg.MoveGrace, "move-grace", agent.DefaultMoveGrace, "how long the connections still open to a task about to move off a server (drain) may go on before its address switches to the new copy; new connections to it wait meanwhile (their clients send the SYN again)")
	fl.DurationVar(&cfg.FenceAfter, "fence-after", 0, "stop this host's paths (guests keep running, cut off) after this long without an acknowledged status report, until the server answers again; set it under the server's --heartbeat-timeout (0: never fence, serve the last state through any outage)")
	addConfigFlag(cmd, "/etc/corridor/agent.yaml")
	return cmd
}
