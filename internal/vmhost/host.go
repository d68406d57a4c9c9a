// Package vmhost runs Corridor servers as QEMU virtual machines with
// kernels of their own: each VM host boots a Debian kernel (with the
// wireguard, vxlan, nf_tables, veth, bridge and tun modules), has the
// corridor Debian package installed in its image by dpkg, keeps the
// agent's state on a disk of its own (so that a reboot keeps it), and
// runs a small init that starts the agent the way corridor-agent.service
// does and starts it again whenever it exits. Its underlay is a tap
// device that the caller plugs into a bridge (internal/lab does, beside
// the control plane). KVM is used where a probe boot under KVM works
// (vm.ProbeKVM), TCG otherwise.
package vmhost

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/atomicfile"
	"github.com/corridor-dev/corridor/internal/dist"
	"github.com/corridor-dev/corridor/internal/guest/vm"
)

// Console lines the host init prints (prefix "corridor-vmhost: ").
const (
	ConsolePrefix = "corridor-vmhost:"
	// AgentStartLine starts the line printed as the agent is started.
	AgentStartLine = ConsolePrefix + " starting agent"
	// WithheldLine is printed when the wireguard module is withheld.
	WithheldLine = ConsolePrefix + " wireguard module withheld"
	// AgentExitLine starts the line printed when the agent exited.
	AgentExitLine = ConsolePrefix + " agent exited"
)

// ConsoleCount counts the console lines after offset off that start
// with prefix.
func ConsoleCount(path string, off int64, prefix string) int {
	b, err := os.ReadFile(path)
	if err != nil || off > int64(len(b)) {
		return 0
	}
	n := 0
	for _, l := range strings.Split(string(b[off:]), "\n") {
		if strings.HasPrefix(strings.TrimRight(l, "\r"), prefix) {
			n++
		}
	}
	return n
}

// WireGuard settings of a host.
const (
	WireGuardKernel   = "kernel"   // the module is there: the agent takes it
	WireGuardWithheld = "withheld" // the module is removed at boot: wireguard-go
)

// Files of a host's directory.
const (
	ConsoleFile = "console.log"
	DiskFile    = "state.img"
	InitrdFile  = "initrd.cpio"
	QMPFile     = "qmp.sock"
	overlayDir  = "overlay"
)

// DefaultMemory is a host's memory in MiB, DefaultDiskSize its state disk.
const (
	DefaultMemory   = 1024
	DefaultDiskSize = 256 << 20
)

// Route is a static route of the host's underlay.
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

// Host is one VM host.
type Host struct {
	Name string
	// Dir holds the host's files: its initramfs, state disk, console log
	// and QMP socket.
	Dir string
	// Address is the underlay address with its subnet's length; Gateway
	// the default route; Routes more routes.
	Address netip.Prefix
	Gateway netip.Addr
	Routes  []Route
	MTU     int
	// Tap is the tap device QEMU attaches eth0 to, MAC eth0's address.
	Tap string
	MAC string
	// WireGuard is WireGuardKernel (default) or WireGuardWithheld.
	WireGuard string
	// AgentConfig is /etc/corridor/agent.yaml; Files are more files of
	// /etc/corridor (ca.crt, join.token), by name.
	AgentConfig []byte
	Files       map[string][]byte
	Memory      int // MiB
	CPUs        int
}

// Console is the host's serial console log (appended to across boots).
func (h *Host) Console() string { return filepath.Join(h.Dir, ConsoleFile) }

// Disk is the host's state disk, mounted on /var/lib/corridor.
func (h *Host) Disk() string { return filepath.Join(h.Dir, DiskFile) }

// QMP is the host's QMP socket.
func (h *Host) QMP() string { return filepath.Join(h.Dir, QMPFile) }

// Prepare writes the host's initramfs (the image's base archive followed
// by an archive of the host's own files) and makes its state disk if it
// has none. A disk already there is kept: it is the host's state.
func (h *Host) Prepare(ctx context.Context, im *Image) error {
	if h.WireGuard == "" {
		h.WireGuard = WireGuardKernel
	}
	if h.WireGuard != WireGuardKernel && h.WireGuard != WireGuardWithheld {
		return fmt.Errorf("vmhost: %s: wireguard %q: use %s or %s", h.Name, h.WireGuard, WireGuardKernel, WireGuardWithheld)
	}
	if err := os.MkdirAll(h.Dir, 0o700); err != nil {
		return fmt.Errorf("vmhost: %w", err)
	}
	ov := filepath.Join(h.Dir, overlayDir)
	if err := os.RemoveAll(ov); err != nil {
		return fmt.Errorf("vmhost: %w", err)
	}
	files := map[string][]byte{
		"etc/vmhost.conf": h.conf(im),
		"etc/hostname":    []byte(h.Name + "\n"),
		strings.TrimPrefix(dist.AgentConfig, "/"): h.AgentConfig,
	}
	for name, b := range h.Files {
		files[filepath.Join(strings.TrimPrefix(dist.ConfigDir, "/"), name)] = b
	}
	for name, b := range files {
		p := filepath.Join(ov, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("vmhost: %w", err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".token") {
			mode = 0o600
		}
		if err := os.WriteFile(p, b, mode); err != nil {
			return fmt.Errorf("vmhost: %w", err)
		}
	}
	var over bytes.Buffer
	if err := writeArchiveTo(&over, ov); err != nil {
		return err
	}
	base, err := os.ReadFile(im.BaseInitrd())
	if err != nil {
		return fmt.Errorf("vmhost: %w", err)
	}
	// The kernel unpacks concatenated archives in turn: the host's files
	// join (or replace) the image's.
	if err := atomicfile.Write(filepath.Join(h.Dir, InitrdFile), append(base, over.Bytes()...), 0o600); err != nil {
		return fmt.Errorf("vmhost: %w", err)
	}
	if _, err := os.Stat(h.Disk()); err == nil {
		return nil
	}
	return makeDisk(ctx, h.Disk(), DefaultDiskSize)
}

// conf is /etc/vmhost.conf, read by the init (shell assignments).
func (h *Host) conf(im *Image) []byte {
	var routes []string
	for _, r := range h.Routes {
		routes = append(routes, r.Dst.String()+"@"+r.Via.String())
	}
	mtu := h.MTU
	if mtu == 0 {
		mtu = 1500
	}
	var b strings.Builder
	for _, kv := range [][2]string{
		{"VMHOST_NAME", h.Name},
		{"VMHOST_ADDR", h.Address.String()},
		{"VMHOST_GW", h.Gateway.String()},
		{"VMHOST_ROUTES", strings.Join(routes, " ")},
		{"VMHOST_MTU", strconv.Itoa(mtu)},
		{"VMHOST_WIREGUARD", h.WireGuard},
		{"VMHOST_MODULES", strings.Join(im.Modules, " ")},
	} {
		fmt.Fprintf(&b, "%s='%s'\n", kv[0], kv[1])
	}
	return []byte(b.String())
}

// makeDisk makes an empty ext4 file system in a sparse file.
func makeDisk(ctx context.Context, path string, size int64) error {
	f, err := os.OpenFile(path+".tmp", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("vmhost: disk: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("vmhost: disk: %w", err)
	}
	f.Close()
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "corstate", path+".tmp").CombinedOutput()
	if err != nil {
		return fmt.Errorf("vmhost: mkfs.ext4 %s: %w: %s (install e2fsprogs)", path, err, out)
	}
	return os.Rename(path+".tmp", path)
}

// Command is the QEMU command line of the host, accel "kvm" or "tcg".
func (h *Host) Command(qemu string, im *Image, accel string) []string {
	mem, cpus := h.Memory, h.CPUs
	if mem == 0 {
		mem = DefaultMemory
	}
	if cpus == 0 {
		cpus = 1
	}
	args := []string{qemu,
		"-name", "corridor-vmhost-" + h.Name,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", vm.DefaultMachine, "-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
	}
	if accel == vm.AccelKVM {
		args = append(args, "-enable-kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg")
	}
	return append(args,
		"-kernel", im.Kernel(), "-initrd", filepath.Join(h.Dir, InitrdFile),
		// no_timer_check: a loaded TCG host fails the kernel's IO-APIC
		// timer check ("IO-APIC + timer doesn't work!").
		"-append", "console=ttyS0 quiet panic=-1 no_timer_check",
		"-chardev", "file,id=con,path="+h.Console()+",append=on", "-serial", "chardev:con",
		"-netdev", "tap,id=n0,ifname="+h.Tap+",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac="+h.MAC,
		"-drive", "file="+h.Disk()+",if=virtio,format=raw",
		"-qmp", "unix:"+h.QMP()+",server=on,wait=off",
	)
}

// MAC is a locally administered MAC address for host i.
func MAC(i int) string { return fmt.Sprintf("52:54:00:c0:%02x:%02x", (i>>8)&0xff, i&0xff) }

// probeVerdict is the KVM verdict cached for this machine's boot.
type probeVerdict struct {
	BootID string `json:"bootID"`
	Kernel string `json:"kernel"`
	Accel  string `json:"accel"`
	Reason string `json:"reason"`
}

// Accel chooses KVM or TCG: mode "on" or "off" decides; "auto" (or "")
// boots the image's probe initramfs under KVM once per machine boot (the
// verdict is cached in the image directory) and takes KVM only when the
// guest's init ran.
func Accel(ctx context.Context, qemu string, im *Image, mode string) (accel, why string, err error) {
	switch mode {
	case vm.KVMOn:
		return vm.AccelKVM, "KVM forced", nil
	case vm.KVMOff:
		return vm.AccelTCG, "KVM disabled", nil
	case "", vm.KVMAuto:
	default:
		return "", "", fmt.Errorf("vmhost: kvm %q: use auto, on or off", mode)
	}
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	bootID := strings.TrimSpace(string(boot))
	path := filepath.Join(im.Dir, "kvm-probe.json")
	var v probeVerdict
	if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &v) == nil && v.BootID == bootID && v.Kernel == im.Hash && bootID != "" {
		return v.Accel, v.Reason + " (cached)", nil
	}
	ok, why := vm.ProbeKVM(ctx, qemu, im.Kernel(), im.ProbeInitrd(), ConsolePrefix, 20*time.Second)
	v = probeVerdict{BootID: bootID, Kernel: im.Hash, Accel: vm.AccelTCG, Reason: "KVM probe failed: " + why}
	if ok {
		v.Accel, v.Reason = vm.AccelKVM, why
	}
	if b, err := json.Marshal(v); err == nil {
		_ = atomicfile.Write(path, b, 0o644)
	}
	return v.Accel, v.Reason, nil
}
