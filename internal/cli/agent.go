package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/dataplane"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/guest/vm"
	"github.com/corridor-dev/corridor/internal/image"
	"github.com/corridor-dev/corridor/internal/spec"
)

func init() { register(newAgentCmd) }

// agentFlags are the flags of `corridor agent`.
type agentFlags struct {
	server, joinToken, joinTokenFile, caFile string
	name, stateDir                           string
	underlayIface, address                   string
	cpu, memory                              string
	labels, label                            map[string]string
	repair                                   time.Duration
	vmImage, kvm                             string
	wgPort                                   int
	wgName                                   string
	userspace                                bool
	listen                                   string
	cleanup                                  bool
	logLevel                                 string
}

func newAgentCmd() *cobra.Command {
	f := &agentFlags{}
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
` + "`corridor verify`" + `, status and Prometheus metrics.`,
		Example: `  # first start: join with the token from the server's data directory
  corridor agent --server https://10.0.0.1:7443 --join-token-file /etc/corridor/join.token \
    --ca /etc/corridor/ca.crt --labels zone=a,rack=r1

  # a lab server in a network namespace, with its own state and device name
  ip netns exec lab-s1 corridor agent --server https://198.18.0.254:7443 --join-token-file join.token \
    --ca ca.crt --name s1 --state-dir /var/lib/lab/s1 --underlay-iface eth0 --wg-name corw-s1

  # remove every guest, device and rule the agent made on this host
  corridor agent --cleanup --state-dir /var/lib/lab/s1 --wg-name corw-s1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl}))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if f.cleanup {
				return runAgentCleanup(ctx, f, log)
			}
			return runAgent(ctx, f, log)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.server, "server", "", "server URL, https://HOST:PORT, on the underlay (required)")
	fl.StringVar(&f.joinToken, "join-token", "", "join token (first start only)")
	fl.StringVar(&f.joinTokenFile, "join-token-file", "", "file holding the join token (first start only)")
	fl.StringVar(&f.caFile, "ca", "", "the cluster CA certificate, to trust the server at join")
	fl.StringVar(&f.name, "name", "", "server name (default: the host name)")
	fl.StringVar(&f.stateDir, "state-dir", agent.DefaultStateDir, "state directory: keys, certificate, desired state, guests")
	fl.StringVar(&f.underlayIface, "underlay-iface", "", "underlay interface (default: the one holding the default route)")
	fl.StringVar(&f.address, "address", "", "underlay address (default: the underlay interface's address)")
	fl.StringVar(&f.cpu, "cpu", "", `CPU capacity offered to tasks, e.g. "4" or "3500m" (default: the machine's CPUs)`)
	fl.StringVar(&f.memory, "memory", "", `memory capacity offered to tasks, e.g. "8Gi" (default: the machine's memory)`)
	fl.StringToStringVar(&f.labels, "labels", nil, "server labels, e.g. zone=a,rack=r1")
	fl.StringToStringVar(&f.label, "label", nil, "one server label KEY=VALUE (repeatable)")
	fl.IntVar(&f.wgPort, "wireguard-port", compile.DefaultWireGuardPort, "UDP port of the WireGuard device")
	fl.StringVar(&f.wgName, "wg-name", dataplane.DefaultWireGuardName, "WireGuard device name (unique on the machine when several agents share it)")
	fl.BoolVar(&f.userspace, "wireguard-userspace", false, "use wireguard-go even where the kernel has WireGuard")
	fl.StringVar(&f.listen, "listen", ":7444", `local API address (mTLS); "" disables it`)
	fl.BoolVar(&f.cleanup, "cleanup", false, "remove every guest, device and rule the agent made on this host, then exit")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.vmImage, "vm-image", image.DefaultOut, "guest image for vm tasks that name no kernel or image (make it with `corridor image build --with-sample`)")
	fl.StringVar(&f.kvm, "kvm", vm.KVMAuto, "KVM for vm guests: auto (a probe boot decides), on or off (TCG)")
	fl.DurationVar(&f.repair, "repair-interval", agent.DefaultRepairInterval, "how often the host's state is checked against the desired state and drift repaired")
	return cmd
}

// hostRuntimes opens the guest runtime and the data plane of this host.
// close releases their handles; guests and kernel state stay.
func hostRuntimes(f *agentFlags, log *slog.Logger, underlay string) (*guest.Manager, *dataplane.Dataplane, func(), error) {
	if err := os.MkdirAll(f.stateDir, 0o700); err != nil {
		return nil, nil, nil, fmt.Errorf("--state-dir: %w", err)
	}
	mtu := guestMTU(underlay, log)
	rt, err := guest.NewNetns(guest.NetnsConfig{StateDir: agent.GuestsDir(f.stateDir), MTU: mtu, Logger: log})
	if err != nil {
		return nil, nil, nil, err
	}
	mgr := guest.NewManager()
	mgr.Register(spec.RuntimeNetns, rt)
	closers := []func() error{rt.Close}
	// VM guests need QEMU; a host without it still runs netns guests, and
	// a vm task placed on it reports why it cannot start.
	vmrt, err := vm.New(vm.Config{StateDir: vmStateDir(f.stateDir), Image: f.vmImage, KVM: f.kvm, MTU: mtu, Logger: log})
	if err != nil {
		log.Warn("vm guests unavailable on this host", "err", err)
	} else {
		mgr.Register(spec.RuntimeVM, vmrt)
		closers = append(closers, vmrt.Close)
	}
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	dp, err := dataplane.New(dataplane.Config{
		StateDir: f.stateDir, Underlay: underlay, WireGuardName: f.wgName,
		Userspace: f.userspace, Logger: log,
	})
	if err != nil {
		closeAll()
		return nil, nil, nil, err
	}
	return mgr, dp, func() { dp.Close(); closeAll() }, nil
}

// guestMTU is the MTU of guests' links: the underlay's less the larger of
// the two tunnels' overheads (WireGuard over IPv6, 80 bytes), so that a
// guest's packet fits either path without fragmenting. A jumbo-frame
// underlay gives guests jumbo frames too.
func guestMTU(underlay string, log *slog.Logger) int {
	const overhead, floor = 80, 1280
	if underlay == "" {
		return guest.DefaultMTU
	}
	l, err := netlink.LinkByName(underlay)
	if err != nil {
		log.Warn("underlay MTU unknown; guests get the default", "iface", underlay, "mtu", guest.DefaultMTU, "err", err)
		return guest.DefaultMTU
	}
	return max(l.Attrs().MTU-overhead, floor)
}

// vmStateDir keeps VM guests apart from netns guests: each runtime's
// Remove owns its own task directories.
func vmStateDir(stateDir string) string { return filepath.Join(stateDir, "vms") }

// tailTaskLog reads a task's log from whichever runtime holds it.
func tailTaskLog(ctx context.Context, stateDir, task string, lines int, follow bool, w io.Writer) error {
	for _, dir := range []string{agent.GuestsDir(stateDir), vmStateDir(stateDir)} {
		if _, err := os.Stat(guest.LogPath(dir, task)); err == nil {
			return guest.TailLogContext(ctx, dir, task, lines, follow, w)
		}
	}
	return guest.TailLogContext(ctx, agent.GuestsDir(stateDir), task, lines, follow, w)
}

func runAgentCleanup(ctx context.Context, f *agentFlags, log *slog.Logger) error {
	mgr, dp, closeAll, err := hostRuntimes(f, log, f.underlayIface)
	if err != nil {
		return err
	}
	defer closeAll()
	if err := agent.Cleanup(ctx, agent.GuestsOf(mgr), dp.Remove, f.stateDir, log); err != nil {
		return err
	}
	log.Info("removed the agent's guests and data plane", "stateDir", f.stateDir)
	return nil
}

func runAgent(ctx context.Context, f *agentFlags, log *slog.Logger) error {
	if f.server == "" {
		return errors.New("--server is required: the URL of `corridor server`, e.g. https://10.0.0.1:7443")
	}
	if f.joinToken != "" && f.joinTokenFile != "" {
		return errors.New("--join-token and --join-token-file: give one, not both")
	}
	if f.wgPort < 1 || f.wgPort > 65535 {
		return fmt.Errorf("--wireguard-port: %d is not from 1 to 65535", f.wgPort)
	}
	if f.name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--name not given and no host name: %w", err)
		}
		f.name = h
	}
	capacity, err := machineCapacity(f.cpu, f.memory)
	if err != nil {
		return err
	}
	labels := map[string]string{}
	maps.Copy(labels, f.labels)
	maps.Copy(labels, f.label)

	iface, addr, err := underlayOf(f.underlayIface, f.address)
	if err != nil {
		return err
	}
	serverAddrs, err := serverAddresses(ctx, f.server)
	if err != nil {
		return err
	}
	if err := agent.CheckControlRoute(nil, serverAddrs, []string{f.wgName, dataplane.VXLANName}); err != nil {
		return err
	}

	token := f.joinToken
	if f.joinTokenFile != "" {
		b, err := os.ReadFile(f.joinTokenFile)
		if err != nil {
			return fmt.Errorf("--join-token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	var bootstrap agent.ControlPlane
	if token != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if f.caFile != "" {
			caPEM, err := os.ReadFile(f.caFile)
			if err != nil {
				return fmt.Errorf("--ca: %w", err)
			}
			if tc.RootCAs, err = api.CAPool(caPEM); err != nil {
				return fmt.Errorf("--ca %s: %w", f.caFile, err)
			}
		}
		// The token goes in the join request, not in a header.
		c, err := api.NewClient(f.server, "", tc)
		if err != nil {
			return fmt.Errorf("--server: %w", err)
		}
		bootstrap = c
	}
	server := f.server
	connect := func(id *agent.Identity) (agent.ControlPlane, error) {
		tc, err := api.AgentTLS(id.CertPEM, id.KeyPEM, id.CAPEM)
		if err != nil {
			return nil, err
		}
		return api.NewClient(server, "", tc)
	}

	mgr, dp, closeAll, err := hostRuntimes(f, log, iface)
	if err != nil {
		return err
	}
	defer closeAll()

	var ln net.Listener
	if f.listen != "" {
		if ln, err = net.Listen("tcp", f.listen); err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
	}
	prober := &agent.Prober{
		GuestNetns: func(task string) string { return guest.NetnsPath(task) },
		Channel:    func(task string) string { return vm.ProbeSocket(vmStateDir(f.stateDir), task) },
	}
	a, err := agent.New(agent.Config{
		Name: f.name, StateDir: f.stateDir,
		Address: addr, UnderlayIface: iface,
		WireGuardPort: f.wgPort,
		Capacity:      capacity, Labels: labels,
		JoinToken: token, Bootstrap: bootstrap, Connect: connect,
		Guests: agent.GuestsOf(mgr), Dataplane: agent.DataplaneOf(dp),
		ServerAddrs: serverAddrs,
		Listener:    ln,
		Logs: func(ctx context.Context, task string, lines int, follow bool, w io.Writer) error {
			return tailTaskLog(ctx, f.stateDir, task, lines, follow, w)
		},
		Probe:             prober.Probe,
		RepairInterval:    f.repair,
		Runtimes:          mgr.Names(),
		ValidateDataplane: dataplane.Validate,
		Logger:            log,
	})
	if err != nil {
		return err
	}
	prober.LocalAddr = a.LocalGuest
	prober.PeerUnderlay = a.PeerUnderlay
	log.Info("corridor agent starting", "name", f.name, "address", addr, "underlay", iface,
		"server", f.server, "stateDir", f.stateDir, "wireguard", f.wgName, "publicKey", dp.PublicKey().String())
	return a.Run(ctx)
}

// underlayOf resolves the underlay interface and address from the flags.
func underlayOf(iface, address string) (string, netip.Addr, error) {
	if address == "" {
		name, addr, err := agent.UnderlayAddr(nil, iface)
		if err != nil {
			return "", netip.Addr{}, fmt.Errorf("underlay: %w", err)
		}
		return name, addr, nil
	}
	addr, err := netip.ParseAddr(address)
	if err != nil {
		return "", netip.Addr{}, fmt.Errorf("--address: %q is not an IP address", address)
	}
	if iface == "" {
		if iface, err = agent.InterfaceOf(nil, addr); err != nil {
			return "", netip.Addr{}, fmt.Errorf("--address: %w", err)
		}
	}
	return iface, addr, nil
}

// serverAddresses resolves the server URL's host to IP addresses.
func serverAddresses(ctx context.Context, server string) ([]netip.Addr, error) {
	u, err := url.Parse(server)
	if err != nil || u.Hostname() == "" {
		return nil, fmt.Errorf("--server: %q is not a URL such as https://10.0.0.1:7443", server)
	}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", u.Hostname())
	if err != nil {
		return nil, fmt.Errorf("--server: resolve %s: %w", u.Hostname(), err)
	}
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs, nil
}

// machineCapacity is what the flags say, else the whole machine.
func machineCapacity(cpu, memory string) (spec.Resources, error) {
	var r spec.Resources
	var err error
	if cpu != "" {
		if r.CPU, err = spec.ParseMilliCPU(cpu); err != nil {
			return r, fmt.Errorf("--cpu: %w", err)
		}
	} else {
		r.CPU = spec.MilliCPU(runtime.NumCPU() * 1000)
	}
	if memory != "" {
		if r.Memory, err = spec.ParseBytes(memory); err != nil {
			return r, fmt.Errorf("--memory: %w", err)
		}
	} else {
		var si unix.Sysinfo_t
		if err := unix.Sysinfo(&si); err != nil {
			return r, fmt.Errorf("read the machine's memory (give --memory): %w", err)
		}
		r.Memory = spec.Bytes(uint64(si.Totalram) * uint64(si.Unit))
	}
	if r.CPU <= 0 || r.Memory <= 0 {
		return r, fmt.Errorf("capacity must be positive: cpu %s, memory %s", r.CPU, r.Memory)
	}
	return r, nil
}
