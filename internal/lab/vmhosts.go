package lab

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/guest/vm"
	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/corridor-dev/corridor/internal/vmhost"
)

// Kinds of lab servers (Options.Hosts).
const (
	// HostsNetns: each server is a network namespace of this machine,
	// sharing its kernel (the fast default).
	HostsNetns = "netns"
	// HostsVM: each server is a QEMU VM with a Debian kernel of its own,
	// running the corridor package (internal/vmhost), its underlay a tap
	// on the lab's bridge.
	HostsVM = "vm"
)

// Roles of VM host processes.
const RoleVMHost = "vmhost" // QEMU of a VM host

// VMOptions configure VM hosts (Options.Hosts == HostsVM).
type VMOptions struct {
	// Package is the corridor Debian package the hosts run (`make dist`).
	Package string
	// KernelDeb is a local kernel package; empty: linux-image-amd64 is
	// fetched with apt-get download into CacheDir.
	KernelDeb string
	CacheDir  string
	// ImageDir caches the built VM host image (vmhost.DefaultImageDir).
	ImageDir string
	// WireGuardGo names the servers whose VM boots with the wireguard
	// module withheld, so that their agent runs wireguard-go.
	WireGuardGo []string
	// KVM: auto (a probe boot decides), on or off (TCG).
	KVM    string
	Memory int // MiB per host
	QEMU   string
	// AgentConfig holds more keys of every VM host's agent.yaml (flags
	// of `corridor agent` without their dashes, as its --config file
	// takes them), e.g. {"status-interval": "1s"}: what Options.AgentArgs
	// are to namespace hosts. Kept in the lab for later power-ons.
	AgentConfig map[string]string
}

// VMHost is a server that is a VM (Server.VM).
type VMHost struct {
	Dir     string `json:"dir"`
	Tap     string `json:"tap"`
	MAC     string `json:"mac"`
	Console string `json:"console"`
	Disk    string `json:"disk"`
	QMP     string `json:"qmp"`
	// WireGuard is "kernel" or "withheld" (the module removed at boot).
	WireGuard string `json:"wireguard"`
	Accel     string `json:"accel"`
	AccelWhy  string `json:"accelWhy,omitempty"`
	// QEMU is the VM's process; Boots counts its starts (power-ons).
	QEMU  *Process `json:"qemu,omitempty"`
	Boots int      `json:"boots"`
	// PoweredOn is when QEMU was last started; ConsoleOffset the size
	// of the console log then (where this boot's lines start).
	PoweredOn     time.Time `json:"poweredOn"`
	ConsoleOffset int64     `json:"consoleOffset"`
}

// crashLooping is how many agent exits in one boot make waitJoined give
// up (the init restarts it every 2 s: a broken agent would otherwise be
// waited for until the join timeout).
const crashLooping = 5

func (o VMOptions) withDefaults() (VMOptions, error) {
	if o.Package == "" {
		return o, errors.New("lab: vm hosts: no corridor package: build it with `make dist` and give --package bin/corridor_VERSION_amd64.deb")
	}
	p, err := filepath.Abs(o.Package)
	if err != nil {
		return o, fmt.Errorf("lab: package: %w", err)
	}
	if _, err := os.Stat(p); err != nil {
		return o, fmt.Errorf("lab: package: %w (build it with `make dist`)", err)
	}
	o.Package = p
	if o.QEMU == "" {
		o.QEMU = vm.DefaultQEMU
	}
	if o.Memory == 0 {
		o.Memory = vmhost.DefaultMemory
	}
	if o.Memory < 256 {
		return o, fmt.Errorf("lab: vm memory: %d MiB is below the 256 MiB a VM host needs", o.Memory)
	}
	for k := range o.AgentConfig {
		if slices.Contains(vmAgentKeys, k) || k == "" || strings.ContainsAny(k, ": \n") {
			return o, fmt.Errorf("lab: vm agent config: key %q: the lab sets %s itself; give other flags of `corridor agent`", k, strings.Join(vmAgentKeys, ", "))
		}
	}
	return o, nil
}

// vmDir holds the VM hosts' directories in the lab directory.
const vmDir = "vm"

// vmTap is the tap of VM server i in the underlay namespace.
func vmTap(i int) string { return "cor-vm" + strconv.Itoa(i) }

// IsVM reports whether the server is a VM host.
func (s *Server) IsVM() bool { return s.VM != nil }

// captureAt is where the server's underlay wire is watched: the server
// namespace's eth0, or a VM host's tap in the underlay namespace.
func (l *Lab) captureAt(s *Server) (namespace, iface string) {
	if s.IsVM() {
		return l.UnderlayNamespace, s.VM.Tap
	}
	return s.Namespace, serverIface
}

// layoutVM turns server i of a new lab into a VM host (nothing made yet).
func layoutVM(s *Server, i int, o Options) {
	dir := filepath.Join(o.Dir, vmDir, s.Name)
	wg := vmhost.WireGuardKernel
	if contains(o.VM.WireGuardGo, s.Name) {
		wg = vmhost.WireGuardWithheld
	}
	s.Namespace = "" // no namespace: the agent runs inside the VM
	s.WireGuardName = ""
	s.Log = filepath.Join(dir, vmhost.ConsoleFile)
	s.StateDir = filepath.Join(dir, vmhost.DiskFile)
	s.VM = &VMHost{Dir: dir, Tap: vmTap(i), MAC: vmhost.MAC(i), Console: filepath.Join(dir, vmhost.ConsoleFile),
		Disk: filepath.Join(dir, vmhost.DiskFile), QMP: filepath.Join(dir, vmhost.QMPFile), WireGuard: wg}
}

// makeVMTap plugs a VM host's tap into the underlay bridge.
func (l *Lab) makeVMTap(s *Server) error {
	ul, err := hostns.Open(l.UnderlayNamespace)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	defer ul.Close()
	if err := vm.CreateTap(ul, s.VM.Tap); err != nil {
		return fmt.Errorf("lab: tap of %s: %w", s.Name, err)
	}
	h, err := openNamespace(l.UnderlayNamespace)
	if err != nil {
		return err
	}
	defer h.Close()
	tap, err := h.LinkByName(s.VM.Tap)
	if err != nil {
		return fmt.Errorf("lab: tap %s: %w", s.VM.Tap, err)
	}
	br, err := h.LinkByName(l.Bridge)
	if err != nil {
		return fmt.Errorf("lab: bridge %s: %w", l.Bridge, err)
	}
	if err := h.LinkSetMTU(tap, l.MTU); err != nil {
		return fmt.Errorf("lab: tap %s mtu: %w", s.VM.Tap, err)
	}
	if err := h.LinkSetMaster(tap, br); err != nil {
		return fmt.Errorf("lab: tap %s on %s: %w", s.VM.Tap, l.Bridge, err)
	}
	return h.LinkSetUp(tap)
}

// vmImage builds (or finds cached) the VM host image.
func vmImage(ctx context.Context, o Options) (*vmhost.Image, error) {
	return vmhost.BuildImage(ctx, vmhost.ImageConfig{Out: o.VM.ImageDir, KernelDeb: o.VM.KernelDeb, CacheDir: o.VM.CacheDir,
		Package: o.VM.Package, Logger: o.Logger})
}

// vmHost is the vmhost description of server s.
func (l *Lab) vmHost(s *Server, memory int) (*vmhost.Host, error) {
	ca, err := os.ReadFile(l.CAFile)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	tok, err := os.ReadFile(l.JoinTokenFile)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	conf := vmAgentConfig(s, l.ServerURL, l.VMAgentConfig)
	var routes []vmhost.Route
	if l.OutsideClient != nil {
		for _, n := range []netip.Prefix{ClientNetwork, clientDeniedNW} {
			routes = append(routes, vmhost.Route{Dst: n, Via: l.OutsideClient.Underlay})
		}
	}
	return &vmhost.Host{Name: s.Name, Dir: s.VM.Dir, Address: netip.PrefixFrom(s.Address, l.Underlay.Bits()),
		Gateway: gatewayAddr(l.Underlay), Routes: routes, MTU: l.MTU, Tap: s.VM.Tap, MAC: s.VM.MAC,
		WireGuard: s.VM.WireGuard, AgentConfig: conf,
		Files: map[string][]byte{"ca.crt": ca, "join.token": tok}, Memory: memory}, nil
}

// vmAgentKeys are the keys of agent.yaml that vmAgentConfig writes.
var vmAgentKeys = []string{"server", "join-token-file", "ca", "state-dir", "labels", "underlay-iface", "name", "listen"}

// vmAgentConfig is a VM host's /etc/corridor/agent.yaml: the one of
// docs/install.md's step 4 (TestVMAgentConfigFollowsInstallPage), with
// the lab's server URL and the host's labels, plus its name, underlay
// interface and API address, and then the keys of extra
// (VMOptions.AgentConfig).
func vmAgentConfig(s *Server, serverURL string, extra map[string]string) []byte {
	var labels []string
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		labels = append(labels, k+": "+s.Labels[k])
	}
	return []byte(fmt.Sprintf(`# /etc/corridor/agent.yaml of lab VM host %s (docs/install.md, step 4)
server: [%s]
join-token-file: /etc/corridor/join.token
ca: /etc/corridor/ca.crt
state-dir: /var/lib/corridor/agent
labels: {%s}
underlay-iface: eth0
name: %s
listen: %q
%s`, s.Name, serverURL, strings.Join(labels, ", "), s.Name, s.Listen, moreKeys(extra)))
}

// moreKeys are the lines of extra's keys, sorted, their values quoted.
func moreKeys(extra map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		fmt.Fprintf(&b, "%s: %s\n", k, strconv.Quote(extra[k]))
	}
	return b.String()
}

// startVMs prepares every VM host and powers it on.
func (l *Lab) startVMs(ctx context.Context, o Options) error {
	shared, err := vmImage(ctx, o)
	if err != nil {
		return err
	}
	accel, why, err := vmhost.Accel(ctx, o.VM.QEMU, shared, o.VM.KVM)
	if err != nil {
		return err
	}
	// The lab's own copy: a reboot must boot what the lab was made with,
	// whatever another lab builds into the shared cache meanwhile.
	im, err := shared.CopyTo(filepath.Join(l.Dir, vmDir, "image"))
	if err != nil {
		return err
	}
	o.Logger.Info("VM hosts accelerator", "accel", accel, "why", why)
	l.VMImage, l.VMQEMU, l.VMMemory, l.VMAgentConfig = im.Dir, o.VM.QEMU, o.VM.Memory, o.VM.AgentConfig
	for i := range l.Servers {
		s := &l.Servers[i]
		if !s.IsVM() {
			continue
		}
		s.VM.Accel, s.VM.AccelWhy = accel, why
		// A new host: no state disk of an earlier lab in this directory.
		if err := os.RemoveAll(s.VM.Dir); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		h, err := l.vmHost(s, o.VM.Memory)
		if err != nil {
			return err
		}
		if err := h.Prepare(ctx, im); err != nil {
			return err
		}
		if err := l.powerOn(s, h, im); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) powerOn(s *Server, h *vmhost.Host, im *vmhost.Image) error {
	if s.VM.QEMU != nil && alive(s.VM.QEMU) {
		return fmt.Errorf("lab: %s is already on (QEMU pid %d)", s.Name, s.VM.QEMU.PID)
	}
	os.Remove(s.VM.QMP)
	args := h.Command(l.VMQEMU, im, s.VM.Accel)
	s.VM.PoweredOn = time.Now().UTC()
	if st, err := os.Stat(s.VM.Console); err == nil {
		s.VM.ConsoleOffset = st.Size()
	}
	p, err := spawn(RoleVMHost, s.Name, l.UnderlayNamespace, filepath.Join(s.VM.Dir, "qemu.log"), args)
	if p != nil {
		s.VM.QEMU = p
		s.VM.Boots++
		if serr := l.save(); serr != nil {
			return serr
		}
	}
	return err
}

// PowerOff cuts a VM host's power (QEMU killed: no shutdown inside).
func (l *Lab) PowerOff(name string) error {
	s := l.Server(name)
	if s == nil || !s.IsVM() {
		return fmt.Errorf("lab: no VM host %q", name)
	}
	if s.VM.QEMU == nil {
		return nil
	}
	_, err := terminate(s.VM.QEMU.PID, s.VM.QEMU.StartTime, 0)
	return err
}

// PowerOn boots a VM host that is off, with its state disk as it was.
// It returns the time QEMU was started.
func (l *Lab) PowerOn(ctx context.Context, name string) (time.Time, error) {
	s := l.Server(name)
	if s == nil || !s.IsVM() {
		return time.Time{}, fmt.Errorf("lab: no VM host %q", name)
	}
	im, err := vmhost.LoadImage(l.VMImage)
	if err != nil {
		return time.Time{}, err
	}
	h, err := l.vmHost(s, l.VMMemory)
	if err != nil {
		return time.Time{}, err
	}
	if err := h.Prepare(ctx, im); err != nil {
		return time.Time{}, err
	}
	err = l.powerOn(s, h, im)
	return s.VM.PoweredOn, err
}
