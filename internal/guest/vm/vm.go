// Package vm is the `runtime: vm` guest runtime: each task runs in its
// own QEMU virtual machine, attached to the host by a tap device that the
// host treats exactly like a netns guest's veth (a /32 route through it,
// proxy ARP on it). The guest boots a kernel and initramfs (by default
// the image of internal/image) and learns its address, gateway and
// command from the kernel command line; its serial console is the task's
// log. KVM is used when a probe boot under KVM succeeds on the host, TCG
// otherwise; TaskStatus.Runtime says which ("vm-kvm", "vm-tcg").
package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/image"
	"github.com/corridor-dev/corridor/internal/spec"
)

// KVM settings of Config.KVM.
const (
	KVMAuto = "auto" // probe boot once, use KVM if the guest comes up
	KVMOn   = "on"
	KVMOff  = "off"
)

// Defaults of Config.
const (
	DefaultQEMU         = "qemu-system-x86_64"
	DefaultMachine      = "pc"
	DefaultMemory       = 256 << 20
	MinMemory           = 64 << 20
	DefaultBootTimeout  = 60 * time.Second
	DefaultProbeTimeout = 20 * time.Second
	DefaultGrace        = 10 * time.Second

	recordFile = "vm.json"
	pidFile    = "qemu.json"
	qmpFile    = "qmp.sock"
	probeSock  = "probe.sock"
	// consoleLines is how many console lines a failure message carries.
	consoleLines = 6
)

// Config configures the VM runtime. Zero values take the defaults.
type Config struct {
	// HostNetns is the path of the host's network namespace (where taps
	// and routes live, and where QEMU runs); empty means the caller's.
	HostNetns string
	// StateDir holds one directory per task (guest.TaskDir): vm.json,
	// qemu.json, qmp.sock, probe.sock and task.log (the serial console). It must not
	// be the netns runtime's StateDir. Required.
	StateDir string
	// Image is the default guest image directory (image.DefaultOut): its
	// kernel and initrd boot every guest whose spec names none.
	Image        string
	QEMU         string
	Machine      string // QEMU -machine; default "pc"
	KVM          string // auto, on or off; default auto
	MTU          int    // default guest.DefaultMTU
	BootTimeout  time.Duration
	ProbeTimeout time.Duration
	BackoffMin   time.Duration
	BackoffMax   time.Duration
	Grace        time.Duration // between system_powerdown and SIGKILL
	// Scope keeps the machine-wide names of this runtime's guests (their
	// cgroups, QEMU's -name) apart from other agents' on the machine
	// (guest.ScopedName), as nsguest.Config.Scope. A guest already
	// recorded keeps the name it was made with.
	Scope  string
	Logger *slog.Logger
	// Gate bounds the programs starting at once (guest.Gate), shared
	// with the agent's other runtimes: a VM holds a slot until it is
	// ready. nil: no bound.
	Gate *guest.Gate
}

// Runtime is the VM guest runtime. It implements guest.Runtime.
type Runtime struct {
	cfg    Config
	policy guest.Policy
	log    *slog.Logger
	host   *guest.HostNet

	accelOnce sync.Once
	accelName string
	accelWhy  string

	ops   guest.TaskLocks // serialise Ensure and Remove of one task; other tasks' run at once
	mu    sync.Mutex      // guards accelName and accelWhy
	tasks guest.Tasks[*vmTask]
}

var _ guest.Runtime = (*Runtime)(nil)

// New opens the host namespace and returns the runtime. Close leaves the
// VMs running; a new runtime on the same StateDir adopts them.
func New(cfg Config) (*Runtime, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("vm: StateDir is required")
	}
	if cfg.Image == "" {
		cfg.Image = image.DefaultOut
	}
	if cfg.QEMU == "" {
		cfg.QEMU = DefaultQEMU
	}
	if cfg.Machine == "" {
		cfg.Machine = DefaultMachine
	}
	switch cfg.KVM {
	case "":
		cfg.KVM = KVMAuto
	case KVMAuto, KVMOn, KVMOff:
	default:
		return nil, fmt.Errorf("vm: KVM %q: use auto, on or off", cfg.KVM)
	}
	if cfg.MTU == 0 {
		cfg.MTU = guest.DefaultMTU
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = DefaultBootTimeout
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	policy, err := guest.Policy{BackoffMin: cfg.BackoffMin, BackoffMax: cfg.BackoffMax, Grace: cfg.Grace}.WithDefaults(DefaultGrace)
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	cfg.BackoffMin, cfg.BackoffMax, cfg.Grace = policy.BackoffMin, policy.BackoffMax, policy.Grace
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if _, err := exec.LookPath(cfg.QEMU); err != nil {
		return nil, fmt.Errorf("vm: %s: %w (install qemu-system-x86)", cfg.QEMU, err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("vm: state dir: %w", err)
	}
	host, err := guest.OpenHostNet(cfg.HostNetns)
	if err != nil {
		return nil, err
	}
	return &Runtime{cfg: cfg, policy: policy, log: cfg.Logger.With("runtime", spec.RuntimeVM), host: host}, nil
}

// Close stops supervising and leaves the VMs running.
func (r *Runtime) Close() error {
	for _, t := range r.tasks.TakeAll() {
		t.sup.Detach()
	}
	return r.host.Close()
}

// Accel is the accelerator guests use (kvm or tcg) and why; empty until
// the first guest is ensured.
func (r *Runtime) Accel() (accel, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.accelName, r.accelWhy
}

func validate(g compile.Guest) error {
	errs := guest.CommonChecks(g)
	if g.Resources.Memory != 0 && g.Resources.Memory < MinMemory {
		errs = append(errs, fmt.Errorf("resources.memory %d is below the %d MiB a VM guest needs", g.Resources.Memory, MinMemory>>20))
	}
	if g.Spec.VCPUs < 0 {
		errs = append(errs, fmt.Errorf("spec.vcpus %d is negative", g.Spec.VCPUs))
	}
	if g.Spec.Initrd != "" && g.Spec.Kernel == "" {
		errs = append(errs, errors.New("spec.initrd needs spec.kernel"))
	}
	// The agent resolves an artifact into the boot files it names
	// (kernel and initrd, or image): never boot the default image in
	// place of one it did not resolve.
	if !g.Spec.Artifact.IsZero() && g.Spec.Kernel == "" && g.Spec.Image == "" {
		errs = append(errs, errors.New("spec.artifact was not resolved to boot files (the agent has no artifact cache)"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("guest %s: %w", g.Task, err)
	}
	return nil
}

// bootFiles are the kernel, initrd and disk a guest boots.
type bootFiles struct {
	Kernel, Initrd, Disk, ImageHash string
}

func (r *Runtime) bootFiles(g compile.Guest) (bootFiles, error) {
	var b bootFiles
	if g.Spec.Kernel != "" {
		b.Kernel, b.Initrd = g.Spec.Kernel, g.Spec.Initrd
	} else {
		im, err := image.Load(r.cfg.Image)
		if err != nil {
			return b, err
		}
		b.Kernel, b.ImageHash = im.KernelPath(), im.Hash
		// A disk image brings its own root and init: the default kernel
		// boots it without the default initramfs.
		if g.Spec.Image == "" {
			b.Initrd = im.InitrdPath()
		}
	}
	b.Disk = g.Spec.Image
	for _, f := range []struct{ field, path string }{{"spec.kernel", b.Kernel}, {"spec.initrd", b.Initrd}, {"spec.image", b.Disk}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return b, fmt.Errorf("%s: %w", f.field, err)
		}
	}
	return b, nil
}

// macFor derives a stable locally administered MAC from the task, so
// that the guest's gateway entry survives a tap being recreated.
func macFor(task, role string, prefix []byte) net.HardwareAddr {
	sum := sha256.Sum256([]byte(role + "\x00" + task))
	mac := append(append(net.HardwareAddr{}, prefix...), sum[:6-len(prefix)]...)
	return mac
}

func hostMAC(task string) net.HardwareAddr  { return macFor(task, "host", []byte{0x02, 0xc0}) }
func guestMAC(task string) net.HardwareAddr { return macFor(task, "guest", []byte{0x52, 0x54, 0x00}) }

// qemuArgs is QEMU's command line for g.
func (r *Runtime) qemuArgs(g compile.Guest, bf bootFiles, accel, dir string) ([]string, error) {
	cl, err := bootParams{
		Addr: g.Address, Gateway: guest.GatewayAddr, GwMAC: hostMAC(g.Task), MTU: r.cfg.MTU,
		Argv: g.Spec.Command, Env: guestEnv(g.Env), Root: map[bool]string{true: "/dev/vda"}[bf.Disk != "" && bf.Initrd == ""],
		Resolvers: g.Resolvers,
	}.cmdline()
	if err != nil {
		return nil, err
	}
	mem := int64(g.Resources.Memory)
	if mem == 0 {
		mem = DefaultMemory
	}
	vcpus := g.Spec.VCPUs
	if vcpus == 0 {
		vcpus = 1
	}
	args := []string{
		"-name", "corridor-" + r.name(g.Task),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", r.cfg.Machine,
	}
	if accel == AccelKVM {
		args = append(args, "-enable-kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg", "-cpu", "max")
	}
	args = append(args,
		"-m", strconv.FormatInt(mem>>20, 10), "-smp", strconv.Itoa(vcpus),
		"-kernel", bf.Kernel, "-append", cl,
		"-netdev", "tap,id=n0,ifname="+g.HostIf+",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac="+guestMAC(g.Task).String(),
		"-chardev", "file,id=con,path="+filepath.Join(dir, guest.LogFile)+",append=on",
		"-serial", "chardev:con",
		"-qmp", "unix:"+filepath.Join(dir, qmpFile)+",server=on,wait=off",
		// The probe port: verify's probes from this guest go through it
		// to a responder inside (see ProbeSocket).
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=probe,path="+filepath.Join(dir, probeSock)+",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=probe,name="+ProbePortName,
	)
	if bf.Initrd != "" {
		args = append(args, "-initrd", bf.Initrd)
	}
	if bf.Disk != "" {
		format := diskFormat(bf.Disk)
		// snapshot=on: the task's writes go to a temporary overlay, so
		// that one image serves every task of a class.
		args = append(args, "-drive", "file="+bf.Disk+",if=virtio,format="+format+",snapshot=on")
	}
	return args, nil
}

// ProbePortName names the guest's virtio-serial port for probes; the
// image's init starts `corridor probe-responder` on it.
const ProbePortName = "corridor.probe"

// ProbeSocket is the host end of a VM task's probe port (a unix socket
// QEMU serves), or "" when the task is not a VM of this state directory.
func ProbeSocket(stateDir, task string) string {
	p := filepath.Join(guest.TaskDir(stateDir, task), probeSock)
	if fi, err := os.Stat(p); err != nil || fi.Mode().Type() != os.ModeSocket {
		return ""
	}
	return p
}

// Ensure implements guest.Runtime.
func (r *Runtime) Ensure(ctx context.Context, g compile.Guest) error {
	if err := validate(g); err != nil {
		return err
	}
	defer r.ops.Lock(g.Task)()
	// Read before the record is rewritten: a guest made under another
	// name (by an agent before scopes) keeps it.
	name := r.name(g.Task)
	dir, err := guest.RecordGuest(r.cfg.StateDir, recordFile, guest.Record{Task: g.Task, Runtime: spec.RuntimeVM, Name: name, Guest: g})
	if err != nil {
		return err
	}
	bf, err := r.bootFiles(g)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Task, err)
	}
	tapIndex, err := r.ensureTap(g)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Task, err)
	}
	accel := r.accel(context.Background(), bf.Kernel, bf.Initrd)
	args, err := r.qemuArgs(g, bf, accel, dir)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Task, err)
	}
	want := launch{args: args, accel: accel, hash: launchHash(args, bf.ImageHash, tapIndex), resources: g.Resources}

	if t, ok := r.tasks.Get(g.Task); ok {
		t.setWant(want)
		return nil
	}
	var adopted *qemuProc
	if prev, err := readRecord(dir); err == nil && prev.Alive() {
		qmp := filepath.Join(dir, qmpFile)
		// The QMP answer proves the PID is our QEMU, not only alive.
		if _, qerr := qmpQuery(qmp, "query-status", 2*time.Second); qerr == nil {
			if p, err := adopt(prev, qmp); err == nil {
				adopted = p
				r.log.Info("adopted running VM", "task", g.Task, "pid", p.PID)
			}
		}
	}
	t := newTask(r, g.Task, dir, want, adopted)
	r.tasks.Put(g.Task, t)
	if adopted != nil {
		go t.sup.Run(adopted)
	} else {
		go t.sup.Run(nil)
	}
	return t.sup.WaitFirst(ctx)
}

// launchHash names what a QEMU runs: a change restarts it. The tap's
// index is part of it: a recreated tap is not the one QEMU holds.
func launchHash(args []string, imageHash string, tapIndex int) string {
	b, _ := json.Marshal(struct {
		Args  []string `json:"args"`
		Image string   `json:"image"`
		Tap   int      `json:"tap"`
	}{args, imageHash, tapIndex})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// ensureTap creates or repairs the guest's tap in the host namespace and
// its host side (route, proxy ARP). It returns the tap's ifindex.
func (r *Runtime) ensureTap(g compile.Guest) (int, error) {
	h := r.host.Handle()
	link, err := h.LinkByName(g.HostIf)
	if err == nil {
		if _, ok := link.(*netlink.Tuntap); !ok {
			// A leftover veth or other link with our name.
			if err := r.host.DeleteLink(g.HostIf); err != nil {
				return 0, err
			}
			link = nil
		}
	} else {
		link = nil
	}
	if link == nil {
		if err := createTap(r.host.NS(), g.HostIf); err != nil {
			return 0, err
		}
		if link, err = h.LinkByName(g.HostIf); err != nil {
			return 0, fmt.Errorf("tap %s: %w", g.HostIf, err)
		}
	}
	if link.Attrs().MTU != r.cfg.MTU {
		if err := h.LinkSetMTU(link, r.cfg.MTU); err != nil {
			return 0, fmt.Errorf("set mtu of %s: %w", g.HostIf, err)
		}
	}
	mac := hostMAC(g.Task)
	if link.Attrs().HardwareAddr.String() != mac.String() {
		if err := h.LinkSetHardwareAddr(link, mac); err != nil {
			return 0, fmt.Errorf("set mac of %s: %w", g.HostIf, err)
		}
	}
	if err := r.host.AttachHost(g.HostIf, g.Address); err != nil {
		return 0, err
	}
	return link.Attrs().Index, nil
}

// Remove implements guest.Runtime.
func (r *Runtime) Remove(ctx context.Context, task string) error {
	defer r.ops.Lock(task)()
	if t, ok := r.tasks.Take(task); ok {
		t.sup.Stop()
	}
	dir := guest.TaskDir(r.cfg.StateDir, task)
	rec, err := guest.ReadRecord(dir, recordFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil // not a VM guest of this runtime
	}
	// A QEMU never adopted (left by an earlier agent) is stopped the same
	// way.
	if prev, err := readRecord(dir); err == nil && prev.Alive() {
		if p, err := adopt(prev, filepath.Join(dir, qmpFile)); err == nil {
			p.End(r.cfg.Grace)
			p.Release()
		}
	}
	var errs []error
	if err == nil && rec.Guest.HostIf != "" {
		if err := r.host.DeleteLink(rec.Guest.HostIf); err != nil {
			errs = append(errs, err)
		}
	}
	name := guest.ScopedName(r.cfg.Scope, task)
	if err == nil {
		name = rec.GuestName()
	}
	if err := unconfine(name); err != nil {
		errs = append(errs, err)
	}
	return guest.RemoveState(task, dir, errs, r.log)
}

// List implements guest.Runtime.
func (r *Runtime) List(ctx context.Context) ([]guest.Info, error) {
	recs, err := guest.Records(r.cfg.StateDir, recordFile, spec.RuntimeVM)
	if err != nil {
		return nil, err
	}
	var out []guest.Info
	for _, rec := range recs {
		in := guest.Info{Task: rec.Task, Runtime: spec.RuntimeVM, Address: rec.Guest.Address, HostIf: rec.Guest.HostIf}
		if pr, err := readRecord(rec.Dir); err == nil && pr.Alive() {
			in.PID = pr.PID
		}
		if l, err := r.host.Handle().LinkByName(rec.Guest.HostIf); err != nil {
			in.Missing = append(in.Missing, "link")
		} else if _, ok := l.(*netlink.Tuntap); !ok {
			in.Missing = append(in.Missing, "link")
		}
		out = append(out, in)
	}
	return out, nil
}

// Status implements guest.Runtime.
func (r *Runtime) Status(task string) api.TaskStatus {
	if t, ok := r.tasks.Get(task); ok {
		return t.sup.Status()
	}
	dir := guest.TaskDir(r.cfg.StateDir, task)
	_, err := os.Stat(filepath.Join(dir, recordFile))
	rec, perr := readRecord(dir)
	if err != nil || perr != nil || !rec.Alive() {
		return guest.UnsupervisedStatus(task, spec.RuntimeVM, err == nil, nil)
	}
	return guest.UnsupervisedStatus(task, "vm-"+rec.Accel, true, &rec.ProcRecord)
}

// GuestDataDir is CORRIDOR_DATA_DIR inside a VM: on the guest's own root
// file system (the initramfs), so it lasts as long as the VM runs.
const GuestDataDir = "/var/lib/corridor/task"

// guestEnv is the task's environment inside the VM: the compiler's
// contract plus the data directory, a path of the guest, not of the host.
func guestEnv(env map[string]string) map[string]string {
	out := make(map[string]string, len(env)+1)
	for k, v := range env {
		out[k] = v
	}
	out[spec.EnvDataDir] = GuestDataDir
	return out
}

// name is task's machine-wide guest name: the recorded one, or the scoped
// one for a guest not made yet (guest.GuestNameIn).
func (r *Runtime) name(task string) string {
	return guest.GuestNameIn(r.cfg.StateDir, recordFile, r.cfg.Scope, task)
}
