package agent

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
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/artifact"
	"github.com/corridor-dev/corridor/internal/dataplane"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/guest/nsguest"
	"github.com/corridor-dev/corridor/internal/guest/vm"
	"github.com/corridor-dev/corridor/internal/spec"
)

// The agent's host assembly: what `corridor agent` builds on a real host
// around the reconcile loop (guest runtimes, data plane, local API,
// prober), from the values of its flags. The CLI parses the flags and
// calls RunHost or CleanupHost.

// GuestsDir is the netns guest runtime's directory in the agent's state
// directory: one directory per task (guest.TaskDir), with its record and
// its log.
func GuestsDir(stateDir string) string { return filepath.Join(stateDir, "guests") }

// VMsDir is the VM runtime's directory in the agent's state directory,
// apart from GuestsDir (netns guests): each runtime's Remove owns its own
// task directories.
func VMsDir(stateDir string) string { return filepath.Join(stateDir, "vms") }

// TaskLogDirs are the runtimes' state directories in which a task's log
// may be, netns guests first.
func TaskLogDirs(stateDir string) []string {
	return []string{GuestsDir(stateDir), VMsDir(stateDir)}
}

// TailTaskLog writes the last lines of a task's log (a netns guest's
// program output, a VM's console) from whichever runtime holds it and,
// with follow, what is appended until ctx ends. A task with no log gives
// the netns runtime's error (fs.ErrNotExist).
func TailTaskLog(ctx context.Context, stateDir, task string, lines int, follow bool, w io.Writer) error {
	dirs := TaskLogDirs(stateDir)
	for _, dir := range dirs {
		if _, err := os.Stat(guest.LogPath(dir, task)); err == nil {
			return guest.TailLogContext(ctx, dir, task, lines, follow, w)
		}
	}
	return guest.TailLogContext(ctx, dirs[0], task, lines, follow, w)
}

// GuestMTU is the MTU of guests' links: the underlay's less the larger of
// the two tunnels' overheads (dataplane.TunnelOverhead), so that a
// guest's packet fits either path without fragmenting. A jumbo-frame
// underlay gives guests jumbo frames too; an unknown one gives
// guest.DefaultMTU.
func GuestMTU(underlay string, log *slog.Logger) int {
	const floor = 1280 // the IPv6 minimum
	if underlay == "" {
		return guest.DefaultMTU
	}
	l, err := netlink.LinkByName(underlay)
	if err != nil {
		log.Warn("underlay MTU unknown; guests get the default", "iface", underlay, "mtu", guest.DefaultMTU, "err", err)
		return guest.DefaultMTU
	}
	return max(l.Attrs().MTU-dataplane.TunnelOverhead, floor)
}

// HostConfig is `corridor agent` on a host: the values of its flags.
type HostConfig struct {
	// Servers are the URLs of the control plane's servers, on the
	// underlay: the agent uses one and fails over to the others.
	Servers                          []string
	JoinToken, JoinTokenFile, CAFile string
	Name, StateDir                   string
	// GuestScope keeps the machine-wide names of this agent's guests
	// (network namespaces, cgroups) apart from other agents' on the same
	// machine (guest.ScopedName); empty: the server name.
	GuestScope             string
	UnderlayIface, Address string
	CPU, Memory            string // capacity as given; empty: the machine's
	Labels                 map[string]string
	WireGuardPort          int
	WireGuardName          string
	WireGuardUserspace     bool
	// WireGuardProcs is the wireguard-go process's GOMAXPROCS; 0: its
	// default (half the CPUs).
	WireGuardProcs int
	// NoFlowOffload keeps plain flows off nftables flowtables even where
	// the kernel has them (dataplane.Config.NoFlowOffload).
	NoFlowOffload bool
	Listen        string // local API address; empty: none
	// MetricsListen is the plain-HTTP address of /metrics for Prometheus
	// (see docs/metrics.md); empty: none.
	MetricsListen  string
	VMImage, KVM   string
	RepairInterval time.Duration
	// StatusInterval is the time between two status reports (0: the
	// default); FenceAfter, if > 0, fences the host's paths after that
	// long without an acknowledged report (Config.FenceAfter).
	StatusInterval, FenceAfter time.Duration
	// MoveGrace bounds the wait for connections to moving tasks
	// (Config.MoveGrace).
	MoveGrace time.Duration
	// ArtifactMaxSize bounds one artifact download (0: the cache's
	// default); ArtifactUnusedFor is how long an artifact no task uses
	// stays cached (0: the cache's default).
	ArtifactMaxSize   int64
	ArtifactUnusedFor time.Duration
	// JoinTimeout bounds the first join (0: try until stopped).
	JoinTimeout time.Duration
	// MaxStarting bounds the guests starting at once (guest.Gate): 0 is
	// DefaultMaxStarting, negative is no bound.
	MaxStarting int
	Logger      *slog.Logger
}

// DefaultMaxStarting is how many guests an agent starts at once by
// default: four times the machine's CPUs, at least 8. A guest holds its
// slot from its start until it is ready, and a start is not always busy
// with the machine's CPUs: a task's own CPU quota paces its guest-init
// (at 1m, 7 s for 70 ms of CPU). With 4 slots, an app of 100 such tasks
// on three lab hosts took 99 s to settle against 30 s unbounded (both at
// load 15 to 30); unbounded, 333 per host never settled.
func DefaultMaxStarting() int { return max(8, 4*runtime.NumCPU()) }

// hostRuntimes opens the guest runtimes and the data plane of this host.
// close releases their handles; guests and kernel state stay.
func hostRuntimes(cfg HostConfig, underlay string) (*guest.Manager, *dataplane.Dataplane, func(), error) {
	log := cfg.Logger
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, nil, nil, fmt.Errorf("--state-dir: %w", err)
	}
	mtu := GuestMTU(underlay, log)
	scope := GuestScope(cfg)
	n := cfg.MaxStarting
	if n == 0 {
		n = DefaultMaxStarting()
	}
	gate := guest.NewGate(n)
	rt, err := nsguest.New(nsguest.Config{StateDir: GuestsDir(cfg.StateDir), Scope: scope, MTU: mtu, Logger: log, Gate: gate})
	if err != nil {
		return nil, nil, nil, err
	}
	mgr := guest.NewManager()
	mgr.Register(spec.RuntimeNetns, rt)
	closers := []func() error{rt.Close}
	// VM guests need QEMU; a host without it still runs netns guests, and
	// a vm task placed on it reports why it cannot start.
	vmrt, err := vm.New(vm.Config{StateDir: VMsDir(cfg.StateDir), Scope: scope, Image: cfg.VMImage, KVM: cfg.KVM, MTU: mtu, Logger: log, Gate: gate})
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
		StateDir: cfg.StateDir, Underlay: underlay, WireGuardName: cfg.WireGuardName,
		Userspace: cfg.WireGuardUserspace, Procs: cfg.WireGuardProcs, NoFlowOffload: cfg.NoFlowOffload, Logger: log,
	})
	if err != nil {
		closeAll()
		return nil, nil, nil, err
	}
	return mgr, dp, func() { dp.Close(); closeAll() }, nil
}

// GuestScope is the scope of the agent's guest names: --guest-scope, else
// the server name, else the host name. Guests already recorded keep the
// names they were made with (guest.Record.GuestName), so a change of
// scope (or an upgrade from an agent before scopes) names only new
// guests differently and interrupts none.
func GuestScope(cfg HostConfig) string {
	if cfg.GuestScope != "" {
		return cfg.GuestScope
	}
	if cfg.Name != "" {
		return cfg.Name
	}
	h, _ := os.Hostname()
	return h
}

// CleanupHost removes every guest, device and rule the agent made on this
// host (Cleanup over the host's runtimes and data plane), then the empty
// cgroup parent directories, and checks that the devices are gone. The
// WireGuard device is the one the agent recorded in its state directory
// (HostFile); cfg.WireGuardName ("": the default) is used only when there
// is no record. It returns an error naming what is left.
func CleanupHost(ctx context.Context, cfg HostConfig) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
		cfg.Logger = log
	}
	rec, ok, err := LoadHostRecord(cfg.StateDir)
	if err != nil {
		log.Warn("the agent's record of its devices is unreadable; using the flags", "err", err)
	}
	name := cfg.WireGuardName
	switch {
	case ok && rec.WireGuardName != "" && name != "" && name != rec.WireGuardName:
		log.Warn("--wg-name differs from the WireGuard device this agent made (recorded in the state directory): removing the recorded one",
			"flag", name, "recorded", rec.WireGuardName, "file", filepath.Join(cfg.StateDir, HostFile))
		name = rec.WireGuardName
	case ok && rec.WireGuardName != "":
		name = rec.WireGuardName
	case name == "":
		name = dataplane.DefaultWireGuardName
	}
	cfg.WireGuardName = name
	if ok && rec.NetNS != "" && rec.NetNS != currentNetNS() {
		log.Warn("cleanup runs in another network namespace than the agent did: its devices are not visible here; run it the way the agent ran (e.g. nsenter --net=/run/netns/HOST)",
			"agent", rec.NetNS, "here", currentNetNS())
	}
	parent := guest.DefaultCgroupParent
	if ok && rec.CgroupParent != "" {
		parent = rec.CgroupParent
	}

	mgr, dp, closeAll, err := hostRuntimes(cfg, cfg.UnderlayIface)
	if err != nil {
		return err
	}
	var errs []error
	if err := Cleanup(ctx, GuestsOf(mgr), dp.Remove, cfg.StateDir, log); err != nil {
		errs = append(errs, err)
	}
	closeAll()
	for _, dev := range []string{name, dataplane.VXLANName} {
		if _, err := netlink.LinkByName(dev); err == nil {
			errs = append(errs, fmt.Errorf("device %s is still there (ip link del %s)", dev, dev))
		}
	}
	removed, kept, err := guest.RemoveCgroupParent(parent)
	if err != nil {
		errs = append(errs, err)
	}
	for dir, children := range kept {
		log.Info("cgroup parent kept: it holds the cgroups of other tasks (another agent on this machine?)", "dir", dir, "cgroups", strings.Join(children, ","))
	}
	if len(errs) > 0 {
		return fmt.Errorf("cleanup incomplete, these are left:\n%w", errors.Join(errs...))
	}
	log.Info("removed the agent's guests and data plane", "stateDir", cfg.StateDir, "wireguard", name, "cgroupsRemoved", strings.Join(removed, ","))
	return nil
}

// RunHost runs the agent on this host until ctx ends: it checks the
// configuration, joins or reconnects, opens the runtimes, the data plane
// and the local API, and runs the reconcile loop.
func RunHost(ctx context.Context, cfg HostConfig) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
		cfg.Logger = log
	}
	if err := closeInheritedOnExec(); err != nil {
		log.Warn("inherited descriptors may pass to the processes the agent starts", "err", err)
	}
	if cfg.WireGuardProcs < 0 {
		return fmt.Errorf("--wireguard-procs %d: must be 0 (half the CPUs) or more", cfg.WireGuardProcs)
	}
	if len(cfg.Servers) == 0 {
		return errors.New("--server is required: the URL of `corridor server`, e.g. https://10.0.0.1:7443 (several, comma-separated, for a control plane of several servers)")
	}
	for _, s := range cfg.Servers {
		if err := checkServerURL(s); err != nil {
			return err
		}
	}
	if cfg.JoinTimeout < 0 {
		return fmt.Errorf("--join-timeout: %s is negative (0 waits forever)", cfg.JoinTimeout)
	}
	if cfg.JoinToken != "" && cfg.JoinTokenFile != "" {
		return errors.New("--join-token and --join-token-file: give one, not both")
	}
	if cfg.WireGuardPort < 1 || cfg.WireGuardPort > 65535 {
		return fmt.Errorf("--wireguard-port: %d is not from 1 to 65535", cfg.WireGuardPort)
	}
	if cfg.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--name not given and no host name: %w", err)
		}
		cfg.Name = h
	}
	capacity, err := MachineCapacity(cfg.CPU, cfg.Memory)
	if err != nil {
		return err
	}
	labels := maps.Clone(cfg.Labels)
	if labels == nil {
		labels = map[string]string{}
	}

	iface, addr, err := underlayOf(cfg.UnderlayIface, cfg.Address)
	if err != nil {
		return err
	}
	var serverAddrs []netip.Addr
	for _, s := range cfg.Servers {
		addrs, err := serverAddresses(ctx, s)
		if err != nil {
			return err
		}
		serverAddrs = append(serverAddrs, addrs...)
	}
	if err := CheckControlRoute(nil, serverAddrs, []string{cfg.WireGuardName, dataplane.VXLANName}); err != nil {
		return err
	}

	token := cfg.JoinToken
	join := JoinOptions{Timeout: cfg.JoinTimeout, TokenSource: "--join-token"}
	if cfg.CAFile != "" {
		join.CA = "--ca " + cfg.CAFile
	}
	if cfg.JoinTokenFile != "" {
		join.TokenSource = "--join-token-file " + cfg.JoinTokenFile
		b, err := os.ReadFile(cfg.JoinTokenFile)
		if err != nil {
			return fmt.Errorf("--join-token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	choice := NewServerChoice(cfg.Servers, log)
	var bootstrap ControlPlane
	if token != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			caPEM, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return fmt.Errorf("--ca: %w", err)
			}
			if tc.RootCAs, err = api.CAPool(caPEM); err != nil {
				return fmt.Errorf("--ca %s: %w", cfg.CAFile, err)
			}
		}
		// The token goes in the join request, not in a header.
		c, err := NewFailover(choice, tc)
		if err != nil {
			return err
		}
		bootstrap = c
	}
	// One choice of server for the join and every identity after it: a
	// renewed certificate keeps talking to the server in use.
	connect := func(id *Identity) (ControlPlane, error) {
		tc, err := api.AgentTLS(id.CertPEM, id.KeyPEM, id.CAPEM)
		if err != nil {
			return nil, err
		}
		return NewFailover(choice, tc)
	}

	if err := checkWireGuardName(cfg.WireGuardName); err != nil {
		return err
	}
	if err := recordHost(cfg, iface); err != nil {
		return err
	}
	mgr, dp, closeAll, err := hostRuntimes(cfg, iface)
	if err != nil {
		return err
	}
	defer closeAll()

	var ln net.Listener
	if cfg.Listen != "" {
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
	}
	var mln net.Listener
	if cfg.MetricsListen != "" {
		if mln, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			if ln != nil {
				ln.Close()
			}
			return fmt.Errorf("--metrics-listen: %w", err)
		}
	}
	stateDir := cfg.StateDir
	artifacts, err := artifact.New(artifact.Config{
		Dir: ArtifactsDir(stateDir), MaxSize: cfg.ArtifactMaxSize, UnusedFor: cfg.ArtifactUnusedFor,
		Fetchers: map[string]artifact.Fetcher{"https": artifact.HTTPFetcher(nil)}, Logger: log,
	})
	if err != nil {
		return err
	}
	prober := &Prober{
		GuestNetns: func(task string) string { return nsguest.NetnsPath(GuestsDir(stateDir), GuestScope(cfg), task) },
		Channel:    func(task string) string { return vm.ProbeSocket(VMsDir(stateDir), task) },
	}
	a, err := New(Config{
		Name: cfg.Name, StateDir: stateDir,
		Address: addr, UnderlayIface: iface,
		WireGuardPort: cfg.WireGuardPort,
		Capacity:      capacity, Labels: labels,
		JoinToken: token, Bootstrap: bootstrap, Connect: connect, Join: join,
		Guests: GuestsOf(mgr), Dataplane: DataplaneOf(dp), Artifacts: artifacts,
		ServerAddrs:     serverAddrs,
		Listener:        ln,
		MetricsListener: mln,
		Logs: func(ctx context.Context, task string, lines int, follow bool, w io.Writer) error {
			return TailTaskLog(ctx, stateDir, task, lines, follow, w)
		},
		Probe:             prober.Probe,
		RepairInterval:    cfg.RepairInterval,
		StatusInterval:    cfg.StatusInterval,
		FenceAfter:        cfg.FenceAfter,
		MoveGrace:         cfg.MoveGrace,
		Runtimes:          mgr.Names(),
		ValidateDataplane: dataplane.Validate,
		Logger:            log,
	})
	if err != nil {
		return err
	}
	prober.LocalAddr = a.LocalGuest
	prober.PeerUnderlay = a.PeerUnderlay
	log.Info("corridor agent starting", "name", cfg.Name, "address", addr, "underlay", iface,
		"servers", strings.Join(cfg.Servers, ","), "stateDir", stateDir, "wireguard", cfg.WireGuardName, "publicKey", dp.PublicKey().String())
	// The data plane repairs itself as soon as the kernel reports a change
	// behind its back (a flushed ruleset, a deleted route or rule, a dead
	// datapath process: dataplane.Watch); the periodic repair stays.
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		if err := dp.Watch(watchCtx, nil); err != nil {
			log.Warn("data plane watch unavailable; repairs wait for the periodic repair", "err", err)
		}
	}()
	defer func() { stopWatch(); <-watchDone }()
	return a.Run(ctx)
}

// recordHost writes HostFile before anything is made, so that --cleanup
// finds the devices without the flags. A device of an earlier run under
// another name is not removed: the agent says so.
func recordHost(cfg HostConfig, underlay string) error {
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	if old, ok, _ := LoadHostRecord(cfg.StateDir); ok && old.WireGuardName != "" && old.WireGuardName != cfg.WireGuardName {
		if _, err := netlink.LinkByName(old.WireGuardName); err == nil {
			cfg.Logger.Warn("the WireGuard device of an earlier run under another --wg-name is still there; remove it with `ip link del`",
				"device", old.WireGuardName, "now", cfg.WireGuardName)
		}
	}
	return SaveHostRecord(cfg.StateDir, HostRecord{
		WireGuardName: cfg.WireGuardName, Underlay: underlay,
		CgroupParent: guest.DefaultCgroupParent, NetNS: currentNetNS(),
	})
}

// underlayOf resolves the underlay interface and address from the flags.
func underlayOf(iface, address string) (string, netip.Addr, error) {
	if address == "" {
		name, addr, err := UnderlayAddr(nil, iface)
		if err != nil {
			return "", netip.Addr{}, err
		}
		return name, addr, nil
	}
	addr, err := netip.ParseAddr(address)
	if err != nil {
		return "", netip.Addr{}, fmt.Errorf("--address: %q is not an IP address", address)
	}
	if iface == "" {
		if iface, err = InterfaceOf(nil, addr); err != nil {
			return "", netip.Addr{}, fmt.Errorf("--address: %w", err)
		}
	}
	return iface, addr, nil
}

// checkServerURL refuses at once a server URL the agent could never join
// through: the server speaks HTTPS only.
func checkServerURL(server string) error {
	u, err := url.Parse(server)
	if err != nil || u.Host == "" {
		return fmt.Errorf("--server: %q is not a URL such as https://10.0.0.1:7443", server)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("--server %s: the server speaks HTTPS only: use https://%s", server, u.Host)
	}
	return nil
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

// MachineCapacity is the capacity offered to tasks: cpu and memory as
// given ("3500m", "8Gi"), else the whole machine.
func MachineCapacity(cpu, memory string) (spec.Resources, error) {
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
