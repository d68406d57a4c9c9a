package guest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/corridor-dev/corridor/internal/hostns"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/atomicfile"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Fixed parts of every netns guest's network.
const (
	// GatewayAddr is the guest's next hop: not an address of the host, it
	// is answered by the host end's proxy ARP (and pinned in the guest's
	// neighbour table), so guests need no per-host gateway address.
	GatewayAddr = "169.254.1.1"
	// GuestIf is the guest's interface name.
	GuestIf = "eth0"
	// DefaultMTU leaves room for the WireGuard (and VXLAN) encapsulation
	// on a 1500-byte underlay.
	DefaultMTU = 1420
	// DefaultCgroupParent is the cgroup under which task cgroups live.
	DefaultCgroupParent = "corridor"
	// DefaultPath is the PATH a program gets unless its env sets one.
	DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

	guestFile = "guest.json"
	// logCheck is how often running programs' logs are checked for size.
	logCheck = 30 * time.Second
)

// NetnsConfig configures the netns runtime. Zero values take the defaults.
type NetnsConfig struct {
	// HostNetns is the path of the host's network namespace, where the
	// veth host ends and the routes to guests live. Empty: the namespace
	// of the caller of NewNetns. In the lab it is the simulated server's
	// namespace, e.g. /run/netns/<server>.
	HostNetns string
	// StateDir holds one directory per task (Name(task)): guest.json,
	// pid.json, task.log. Required.
	StateDir string
	// Binary replaces a command whose program is literally "corridor"
	// (default: this executable).
	Binary string
	// CgroupParent is the cgroup, relative to each hierarchy root, under
	// which task cgroups are made. /run/netns and the cgroup tree are
	// machine-wide: lab servers sharing a machine share them too.
	CgroupParent string
	Logger       *slog.Logger
	MTU          int // of both veth ends; default DefaultMTU
	BackoffMin   time.Duration
	BackoffMax   time.Duration
	Grace        time.Duration // between SIGTERM and SIGKILL
	LogMaxBytes  int64         // default DefaultLogMaxBytes
}

// Netns is the runtime of network-namespace guests: a process in its own
// netns (named cor-<Name(task)>, visible to `ip netns`) and cgroup,
// linked to the host by a veth pair.
type Netns struct {
	cfg    NetnsConfig
	log    *slog.Logger
	host   *HostNet
	layout cgroupLayout

	ops sync.Mutex // serialises Ensure and Remove

	mu    sync.Mutex
	tasks map[string]*netnsTask

	quit      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var (
	_ Runtime = (*Netns)(nil)
	_ Runtime = (*Manager)(nil)
)

// netnsTask is a supervised guest.
type netnsTask struct {
	mu   sync.Mutex
	want compile.Guest
	hash string
	sup  *supervisor
}

func (t *netnsTask) wanted() (compile.Guest, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.want, t.hash
}

// guestRecord is guest.json: what the guest was last ensured as, so that
// List and Remove work after a restart without the desired state.
type guestRecord struct {
	Task    string        `json:"task"`
	Runtime string        `json:"runtime"`
	Netns   string        `json:"netns"`
	Guest   compile.Guest `json:"guest"`
}

// NewNetns opens the host namespace, finds the cgroup hierarchies and
// returns the runtime. Close releases it and leaves guests running.
func NewNetns(cfg NetnsConfig) (*Netns, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("guest: netns runtime: StateDir is required")
	}
	if cfg.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("guest: netns runtime: find own binary (set Binary): %w", err)
		}
		cfg.Binary = exe
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		return nil, fmt.Errorf("guest: netns runtime: BackoffMax %s is below BackoffMin %s", cfg.BackoffMax, cfg.BackoffMin)
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.LogMaxBytes <= 0 {
		cfg.LogMaxBytes = DefaultLogMaxBytes
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("guest: netns runtime: state dir: %w", err)
	}
	layout, err := detectCgroups()
	if err != nil {
		return nil, err
	}
	host, err := OpenHostNet(cfg.HostNetns)
	if err != nil {
		return nil, err
	}
	r := &Netns{
		cfg: cfg, log: cfg.Logger.With("runtime", spec.RuntimeNetns), host: host, layout: layout,
		tasks: map[string]*netnsTask{}, quit: make(chan struct{}),
	}
	r.wg.Add(1)
	go r.rotateLogs()
	return r, nil
}

// Close stops supervising and releases the host namespace. Programs keep
// running; a new runtime on the same StateDir adopts them.
func (r *Netns) Close() error {
	var err error
	r.closeOnce.Do(func() {
		close(r.quit)
		r.wg.Wait()
		r.mu.Lock()
		tasks := r.tasks
		r.tasks = map[string]*netnsTask{}
		r.mu.Unlock()
		for _, t := range tasks {
			t.sup.Detach()
		}
		err = r.host.Close()
	})
	return err
}

// validate checks what the netns runtime needs from a guest.
func validate(g compile.Guest) error {
	if err := errors.Join(CommonChecks(g)...); err != nil {
		return fmt.Errorf("guest %s: %w", g.Task, err)
	}
	return nil
}

// CommonChecks are the checks every runtime makes of a guest before
// touching the host: a task, an IPv4 address, a valid host interface name
// and a command. A runtime adds its own and wraps them with the task.
func CommonChecks(g compile.Guest) []error {
	var errs []error
	if g.Task == "" {
		errs = append(errs, errors.New("task is empty"))
	}
	if !g.Address.IsValid() || !g.Address.Is4() {
		errs = append(errs, fmt.Errorf("address %q is not an IPv4 address", g.Address))
	}
	if g.HostIf == "" || len(g.HostIf) > 15 || strings.ContainsAny(g.HostIf, "/ \t\n:") {
		errs = append(errs, fmt.Errorf("hostIf %q is not a valid interface name (1 to 15 characters, no '/', ':' or space)", g.HostIf))
	}
	if len(g.Spec.Command) == 0 || g.Spec.Command[0] == "" {
		errs = append(errs, errors.New("spec.command is empty"))
	}
	return errs
}

// Ensure implements Runtime.
func (r *Netns) Ensure(ctx context.Context, g compile.Guest) error {
	if err := validate(g); err != nil {
		return err
	}
	r.ops.Lock()
	defer r.ops.Unlock()

	dir := TaskDir(r.cfg.StateDir, g.Task)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("guest %s: state dir: %w", g.Task, err)
	}
	// Recorded before any kernel object exists, so that a crash half-way
	// leaves something List shows and Remove can clean.
	rec, err := json.MarshalIndent(guestRecord{Task: g.Task, Runtime: spec.RuntimeNetns, Netns: NetnsName(g.Task), Guest: g}, "", "  ")
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Task, err)
	}
	if err := atomicfile.Write(filepath.Join(dir, guestFile), rec, 0o644); err != nil {
		return err
	}
	if err := r.ensureNetwork(g); err != nil {
		return fmt.Errorf("guest %s: %w", g.Task, err)
	}
	cg := r.cgroup(g.Task)
	if err := cg.Ensure(g.Resources); err != nil {
		return fmt.Errorf("guest %s: %w", g.Task, err)
	}
	hash := r.programHash(g)

	r.mu.Lock()
	t := r.tasks[g.Task]
	r.mu.Unlock()
	if t != nil {
		t.mu.Lock()
		changed := t.hash != hash
		t.want, t.hash = g, hash
		t.mu.Unlock()
		if changed {
			t.sup.Poke()
		}
		return nil
	}

	t = &netnsTask{want: g, hash: hash}
	t.sup = newSupervisor(g.Task, spec.RuntimeNetns, r.log, r.cfg.BackoffMin, r.cfg.BackoffMax, r.cfg.Grace)
	t.sup.start = func() (*proc, error) { return r.startProgram(t) }
	t.sup.wantHash = func() string { _, h := t.wanted(); return h }
	t.sup.afterExit = func() {
		cg.Kill(syscall.SIGKILL, 2*time.Second)
		os.Remove(filepath.Join(dir, pidFile))
	}
	// An agent restart finds the program of the agent before still
	// running: watch it instead of starting a second copy.
	var adopted *proc
	if prev, err := readPidFile(dir); err == nil && prev.Alive() {
		if p, err := adopt(prev); err == nil {
			adopted = p
			r.log.Info("adopted running program", "task", g.Task, "pid", p.PID)
		}
	}
	r.mu.Lock()
	r.tasks[g.Task] = t
	r.mu.Unlock()
	go t.sup.run(adopted)
	if adopted != nil && adopted.Hash == hash {
		return nil
	}
	select {
	case <-t.sup.firstTry:
		if t.sup.firstErr != nil {
			return fmt.Errorf("guest %s: %w (retrying with backoff)", g.Task, t.sup.firstErr)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Remove implements Runtime.
func (r *Netns) Remove(ctx context.Context, task string) error {
	r.ops.Lock()
	defer r.ops.Unlock()
	r.mu.Lock()
	t := r.tasks[task]
	delete(r.tasks, task)
	r.mu.Unlock()
	if t != nil {
		t.sup.Stop()
	}
	dir := TaskDir(r.cfg.StateDir, task)
	// A program never adopted (left by an earlier agent, not ensured
	// since) is stopped the same way.
	if rec, err := readPidFile(dir); err == nil && rec.Alive() {
		if p, err := adopt(rec); err == nil {
			p.stop(r.cfg.Grace)
			p.Release()
		}
	}
	var errs []error
	cg := r.cgroup(task)
	if !cg.Kill(syscall.SIGKILL, 5*time.Second) {
		errs = append(errs, fmt.Errorf("guest %s: processes left in cgroup after SIGKILL", task))
	}
	if err := cg.Remove(); err != nil {
		errs = append(errs, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, guestFile)); err == nil {
		var rec guestRecord
		if err := json.Unmarshal(b, &rec); err == nil && rec.Guest.HostIf != "" {
			// Deleting the netns would take the veth with it, unless a
			// process (say an `ip netns exec` shell) holds the namespace.
			if err := r.host.DeleteLink(rec.Guest.HostIf); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := hostns.Delete(NetnsName(task)); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("guest %s: remove state: %w", task, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.log.Info("guest removed", "task", task)
	return nil
}

// List implements Runtime. It starts from the state directory, not from
// /run/netns or the cgroup tree: those are machine-wide, and in the lab
// several agents (one per simulated server) share them, so a cor-
// namespace without a record here belongs to someone else. Each recorded
// guest is then checked against the kernel (Info.Missing, Info.PID).
func (r *Netns) List(ctx context.Context) ([]Info, error) {
	ents, err := os.ReadDir(r.cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("guest: list %s: %w", r.cfg.StateDir, err)
	}
	var out []Info
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(r.cfg.StateDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, guestFile))
		if err != nil {
			continue
		}
		var rec guestRecord
		if err := json.Unmarshal(b, &rec); err != nil || rec.Runtime != spec.RuntimeNetns {
			continue
		}
		in := Info{Task: rec.Task, Runtime: rec.Runtime, Address: rec.Guest.Address, HostIf: rec.Guest.HostIf, Netns: rec.Netns}
		if pr, err := readPidFile(dir); err == nil && pr.Alive() {
			in.PID = pr.PID
		}
		if !hostns.Exists(rec.Netns) {
			in.Missing = append(in.Missing, "netns")
		}
		if _, err := r.host.Handle().LinkByName(rec.Guest.HostIf); err != nil {
			in.Missing = append(in.Missing, "link")
		}
		for _, d := range r.cgroup(rec.Task).dirs() {
			if _, err := os.Stat(d); err != nil {
				in.Missing = append(in.Missing, "cgroup")
				break
			}
		}
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, b Info) int { return strings.Compare(a.Task, b.Task) })
	return out, nil
}

// Status implements Runtime.
func (r *Netns) Status(task string) api.TaskStatus {
	r.mu.Lock()
	t := r.tasks[task]
	r.mu.Unlock()
	if t != nil {
		return t.sup.Status()
	}
	st := api.TaskStatus{Task: task, Runtime: spec.RuntimeNetns, State: api.TaskPending, Message: "no such guest"}
	dir := TaskDir(r.cfg.StateDir, task)
	if _, err := os.Stat(filepath.Join(dir, guestFile)); err != nil {
		return st
	}
	if rec, err := readPidFile(dir); err == nil && rec.Alive() {
		st.State, st.Message, st.Since = api.TaskRunning, "not yet supervised by this agent", rec.Started
		return st
	}
	st.State, st.Message = api.TaskStopped, "not running"
	return st
}

func (r *Netns) cgroup(task string) taskCgroup {
	return taskCgroup{layout: r.layout, rel: filepath.Join(r.cfg.CgroupParent, Name(task))}
}

// command is the guest's argv with "corridor" replaced by the agent's
// own binary.
func (r *Netns) command(g compile.Guest) []string {
	argv := slices.Clone(g.Spec.Command)
	if argv[0] == "corridor" {
		argv[0] = r.cfg.Binary
	}
	return argv
}

// programEnv is the program's environment: g.Env (the compiler's
// contract merged over spec env) plus PATH and HOME unless set, and the
// task's private data directory, sorted.
func programEnv(g compile.Guest, dataDir string) []string {
	env := map[string]string{"PATH": DefaultPath, "HOME": "/", spec.EnvDataDir: dataDir}
	for k, v := range g.Env {
		env[k] = v
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

// programHash names what runs: a change of it restarts the program.
func (r *Netns) programHash(g compile.Guest) string {
	b, _ := json.Marshal(struct {
		Argv []string `json:"argv"`
		Env  []string `json:"env"`
	}{r.command(g), programEnv(g, dataDir(r.cfg.StateDir, g.Task))})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// lookPath resolves the program with the guest's PATH, not the agent's.
func lookPath(file, path string) (string, error) {
	if strings.Contains(file, "/") {
		if err := executable(file); err != nil {
			return "", fmt.Errorf("command %q: %w", file, err)
		}
		return file, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, file)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %q not found in PATH %s", file, path)
}

func executable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// startProgram starts t's wanted program in the guest's netns and cgroup.
func (r *Netns) startProgram(t *netnsTask) (*proc, error) {
	g, hash := t.wanted()
	dir := TaskDir(r.cfg.StateDir, g.Task)
	cg := r.cgroup(g.Task)
	// Processes forked by an earlier run that outlived it.
	cg.Kill(syscall.SIGKILL, 2*time.Second)

	argv := r.command(g)
	data := dataDir(r.cfg.StateDir, g.Task)
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, fmt.Errorf("guest: data directory: %w", err)
	}
	env := programEnv(g, data)
	pathVar := DefaultPath
	if v, ok := g.Env["PATH"]; ok {
		pathVar = v
	}
	exe, err := lookPath(argv[0], pathVar)
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, logFile)
	if err := rotateLog(logPath, r.cfg.LogMaxBytes, false); err != nil {
		r.log.Warn("log rotation failed", "task", g.Task, "err", err)
	}
	lf, err := os.OpenFile(logPath, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer lf.Close()
	fmt.Fprintf(lf, "%s corridor: starting %q\n", time.Now().UTC().Format(time.RFC3339), argv)

	cmd := &exec.Cmd{
		Path: exe, Args: argv, Env: env, Dir: "/",
		Stdout: lf, Stderr: lf,
		// Own session: the program outlives the agent, and its process
		// group can be signalled as one.
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if r.layout.Version == cgroupV2 {
		// Born in its cgroup: nothing it does escapes the limits.
		cgf, err := cg.OpenDir()
		if err != nil {
			return nil, err
		}
		defer cgf.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cgf.Fd())
	}
	ns, err := hostns.Open(NetnsName(g.Task))
	if err != nil {
		return nil, fmt.Errorf("open guest netns: %w", err)
	}
	defer ns.Close()
	if err := nsrun.DoHandle(ns, cmd.Start); err != nil {
		return nil, fmt.Errorf("start %q: %w", argv[0], err)
	}
	pid := cmd.Process.Pid
	if r.layout.Version == cgroupV1 {
		// v1 cannot start a child in a cgroup: it is moved right after
		// start. Until then (microseconds; the child is usually still in
		// exec) it runs in the agent's cgroup, and a process it forks in
		// that window stays there: outside the limits and the cgroup
		// sweep, reached only by the process-group signals. Accepted on
		// v1 hosts; v2 has no such window.
		if err := cg.AddProc(pid); err != nil {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = cmd.Wait()
			return nil, err
		}
	}
	// A program that has already exited has no start time; recording 0
	// keeps the next agent from adopting it.
	rec := procRecord{ProcID: ProcIDOf(pid), Hash: hash, Started: time.Now()}
	if err := writePidFile(dir, rec); err != nil {
		r.log.Warn("pidfile not written: an agent restart will not find the program", "task", g.Task, "err", err)
	}
	return watchChild(cmd, rec), nil
}

// rotateLogs keeps the logs of running programs under LogMaxBytes.
func (r *Netns) rotateLogs() {
	defer r.wg.Done()
	tk := time.NewTicker(logCheck)
	defer tk.Stop()
	for {
		select {
		case <-r.quit:
			return
		case <-tk.C:
		}
		r.mu.Lock()
		var tasks []string
		for task := range r.tasks {
			tasks = append(tasks, task)
		}
		r.mu.Unlock()
		for _, task := range tasks {
			if err := rotateLog(LogPath(r.cfg.StateDir, task), r.cfg.LogMaxBytes, true); err != nil {
				r.log.Warn("log rotation failed", "task", task, "err", err)
			}
		}
	}
}

// ensureNetwork creates or repairs the guest's netns, veth pair,
// addresses and routes, on both sides.
func (r *Netns) ensureNetwork(g compile.Guest) error {
	ns, err := hostns.Ensure(NetnsName(g.Task))
	if err != nil {
		return err
	}
	defer ns.Close()
	gh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in guest netns: %w", err)
	}
	defer gh.Close()
	hh := r.host.Handle()

	if !r.vethIntact(gh, ns, g.HostIf) {
		if err := r.host.DeleteLink(g.HostIf); err != nil {
			return err
		}
		if l, err := gh.LinkByName(GuestIf); err == nil {
			if err := gh.LinkDel(l); err != nil {
				return fmt.Errorf("delete stale %s in guest: %w", GuestIf, err)
			}
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: g.HostIf, MTU: r.cfg.MTU},
			PeerName:      GuestIf,
			PeerNamespace: netlink.NsFd(int(ns)),
		}
		if err := hh.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s: %w", g.HostIf, err)
		}
	}
	hostLink, err := hh.LinkByName(g.HostIf)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", g.HostIf, err)
	}
	if hostLink.Attrs().MTU != r.cfg.MTU {
		if err := hh.LinkSetMTU(hostLink, r.cfg.MTU); err != nil {
			return fmt.Errorf("set mtu of %s: %w", g.HostIf, err)
		}
	}
	if err := configureGuest(gh, g.Address, r.cfg.MTU, hostLink.Attrs().HardwareAddr); err != nil {
		return err
	}
	return r.host.AttachHost(g.HostIf, g.Address)
}

// vethIntact tells whether host end hostIf and the guest's eth0 are the
// two ends of one veth pair. Interface indexes alone do not prove it
// (every guest's eth0 tends to be index 2), so the peers' namespace IDs
// are compared too.
func (r *Netns) vethIntact(gh *netlink.Handle, guestNS netns.NsHandle, hostIf string) bool {
	hh := r.host.Handle()
	hl, err := hh.LinkByName(hostIf)
	if err != nil || hl.Type() != "veth" {
		return false
	}
	gl, err := gh.LinkByName(GuestIf)
	if err != nil || gl.Type() != "veth" {
		return false
	}
	if hl.Attrs().ParentIndex != gl.Attrs().Index || gl.Attrs().ParentIndex != hl.Attrs().Index {
		return false
	}
	gid, err := hh.GetNetNsIdByFd(int(guestNS))
	if err != nil || gid < 0 || hl.Attrs().NetNsID != gid {
		return false
	}
	hid, err := gh.GetNetNsIdByFd(int(r.host.NS()))
	return err == nil && hid >= 0 && gl.Attrs().NetNsID == hid
}

// configureGuest sets the inside of the guest: lo and eth0 up, only addr
// on eth0, the gateway's link route and neighbour entry, the default
// route.
func configureGuest(gh *netlink.Handle, addr netip.Addr, mtu int, hostMAC net.HardwareAddr) error {
	lo, err := gh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("guest lo: %w", err)
	}
	if err := gh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set guest lo up: %w", err)
	}
	eth, err := gh.LinkByName(GuestIf)
	if err != nil {
		return fmt.Errorf("guest %s: %w", GuestIf, err)
	}
	if eth.Attrs().MTU != mtu {
		if err := gh.LinkSetMTU(eth, mtu); err != nil {
			return fmt.Errorf("set mtu of guest %s: %w", GuestIf, err)
		}
	}
	if err := gh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set guest %s up: %w", GuestIf, err)
	}
	want := &netlink.Addr{IPNet: prefixIPNet(netip.PrefixFrom(addr, 32))}
	addrs, err := gh.AddrList(eth, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list guest addresses: %w", err)
	}
	for _, a := range addrs {
		if !a.IPNet.IP.Equal(want.IP) || a.IPNet.Mask.String() != want.Mask.String() {
			if err := gh.AddrDel(eth, &a); err != nil {
				return fmt.Errorf("delete stale guest address %s: %w", a.IPNet, err)
			}
		}
	}
	if err := gh.AddrReplace(eth, want); err != nil {
		return fmt.Errorf("add guest address %s: %w", want.IPNet, err)
	}
	gw := net.ParseIP(GatewayAddr).To4()
	if err := gh.RouteReplace(&netlink.Route{
		LinkIndex: eth.Attrs().Index, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK,
	}); err != nil {
		return fmt.Errorf("guest route to %s: %w", GatewayAddr, err)
	}
	// Pinned so that the guest does not depend on proxy ARP, which only
	// answers when the host has a route to 169.254.1.1 (a lab server
	// namespace may have no default route).
	if err := gh.NeighSet(&netlink.Neigh{
		LinkIndex: eth.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: gw, HardwareAddr: hostMAC,
	}); err != nil {
		return fmt.Errorf("guest neighbour %s: %w", GatewayAddr, err)
	}
	if err := gh.RouteReplace(&netlink.Route{
		LinkIndex: eth.Attrs().Index, Gw: gw, Flags: int(netlink.FLAG_ONLINK),
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
	}); err != nil {
		return fmt.Errorf("guest default route: %w", err)
	}
	return nil
}

// dataDir is the task's private data directory (CORRIDOR_DATA_DIR): inside
// its state directory, so that removing the task removes its data.
func dataDir(stateDir, task string) string {
	return filepath.Join(TaskDir(stateDir, task), "data")
}
