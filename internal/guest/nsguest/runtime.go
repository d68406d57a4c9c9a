// Package nsguest is the `runtime: netns` guest runtime: each task's
// program runs in its own network namespace (named
// cor-<guest.ScopedName(scope, task)>, visible to `ip netns`) and cgroup, linked to the host by a veth pair.
// It sits beside internal/guest/vm and shares the kit of internal/guest
// (supervisor, cgroups, host networking, names and state layout).
//
// The package is not called netns: every file that handles namespaces
// (this runtime's network setup, its tests, the lab, the agent's prober)
// also imports github.com/vishvananda/netns, and two packages of one name
// would need an alias at each of those sites.
//
// Files by concern: runtime.go (configuration, Ensure, Remove, Status),
// network.go (the namespace, veth pair, addresses and routes), program.go
// (starting and watching the program, its log), records.go (guest.json
// and pid.json), list.go (finding guests again after a restart).
package nsguest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Config configures the netns runtime. Zero values take the defaults.
type Config struct {
	// HostNetns is the path of the host's network namespace, where the
	// veth host ends and the routes to guests live. Empty: the namespace
	// of the caller of New. In the lab it is the simulated server's
	// namespace, e.g. /run/netns/<server>.
	HostNetns string
	// StateDir holds one directory per task (guest.TaskDir): guest.json,
	// pid.json, task.log, data/. Required.
	StateDir string
	// Binary replaces a command whose program is literally "corridor"
	// (default: this executable).
	Binary string
	// InitBinary is started with InitArg to seal each program
	// (guest-init): a binary whose main calls InitMain for it (default:
	// this executable).
	InitBinary string
	// CgroupParent is the cgroup, relative to each hierarchy root, under
	// which task cgroups are made. /run/netns and the cgroup tree are
	// machine-wide: lab servers sharing a machine share them too.
	CgroupParent string
	// Scope keeps this runtime's machine-wide guest names (network
	// namespaces, cgroups) apart from any other agent's on the machine
	// (guest.ScopedName): the agent's --guest-scope, its server name by
	// default. Empty: unscoped names, as agents before scopes made them.
	// A guest already recorded keeps the name it was made with.
	Scope       string
	Logger      *slog.Logger
	MTU         int // of both veth ends; default guest.DefaultMTU
	BackoffMin  time.Duration
	BackoffMax  time.Duration
	Grace       time.Duration // between SIGTERM and SIGKILL
	LogMaxBytes int64         // default guest.DefaultLogMaxBytes
	// Gate bounds the programs starting at once (guest.Gate), shared
	// with the agent's other runtimes; nil: no bound.
	Gate *guest.Gate
}

// Runtime is the netns guest runtime. It implements guest.Runtime.
type Runtime struct {
	cfg     Config
	policy  guest.Policy
	log     *slog.Logger
	host    *guest.HostNet
	cgroups guest.Cgroups

	ops   guest.TaskLocks // serialise Ensure and Remove of one task; other tasks' run at once
	tasks guest.Tasks[*task]

	quit      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ guest.Runtime = (*Runtime)(nil)

// task is a supervised guest.
type task struct {
	mu   sync.Mutex
	want compile.Guest
	hash string
	sup  *guest.Supervisor
}

func (t *task) wanted() (compile.Guest, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.want, t.hash
}

// New opens the host namespace, finds the cgroup hierarchies and returns
// the runtime. Close releases it and leaves guests running.
func New(cfg Config) (*Runtime, error) {
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
	if cfg.InitBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("guest: netns runtime: find own binary (set InitBinary): %w", err)
		}
		cfg.InitBinary = exe
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = guest.DefaultCgroupParent
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MTU == 0 {
		cfg.MTU = guest.DefaultMTU
	}
	policy, err := guest.Policy{BackoffMin: cfg.BackoffMin, BackoffMax: cfg.BackoffMax, Grace: cfg.Grace}.WithDefaults(guest.DefaultGrace)
	if err != nil {
		return nil, fmt.Errorf("guest: netns runtime: %w", err)
	}
	cfg.BackoffMin, cfg.BackoffMax, cfg.Grace = policy.BackoffMin, policy.BackoffMax, policy.Grace
	if cfg.LogMaxBytes <= 0 {
		cfg.LogMaxBytes = guest.DefaultLogMaxBytes
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("guest: netns runtime: state dir: %w", err)
	}
	cgroups, err := guest.DetectCgroups()
	if err != nil {
		return nil, err
	}
	host, err := guest.OpenHostNet(cfg.HostNetns)
	if err != nil {
		return nil, err
	}
	r := &Runtime{
		cfg: cfg, policy: policy, log: cfg.Logger.With("runtime", spec.RuntimeNetns), host: host, cgroups: cgroups,
		quit: make(chan struct{}),
	}
	r.wg.Add(1)
	go r.rotateLogs()
	return r, nil
}

// Close stops supervising and releases the host namespace. Programs keep
// running; a new runtime on the same StateDir adopts them.
func (r *Runtime) Close() error {
	var err error
	r.closeOnce.Do(func() {
		close(r.quit)
		r.wg.Wait()
		for _, t := range r.tasks.TakeAll() {
			t.sup.Detach()
		}
		err = r.host.Close()
	})
	return err
}

// validate checks what the netns runtime needs from a guest.
func validate(g compile.Guest) error {
	if err := errors.Join(guest.CommonChecks(g)...); err != nil {
		return fmt.Errorf("guest %s: %w", g.Task, err)
	}
	return nil
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
	dir, err := guest.RecordGuest(r.cfg.StateDir, guest.RecordFile, record(g, name))
	if err != nil {
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

	if t, ok := r.tasks.Get(g.Task); ok {
		t.mu.Lock()
		changed := t.hash != hash
		t.want, t.hash = g, hash
		t.mu.Unlock()
		if changed {
			t.sup.Poke()
		}
		return nil
	}

	t := &task{want: g, hash: hash}
	t.sup = guest.NewSupervisor(guest.SupervisorConfig{
		Task: g.Task, Runtime: spec.RuntimeNetns, Noun: "program",
		Changed: "command or environment changed",
		Log:     r.log, Policy: r.policy,
		Start: func() (guest.Program, error) {
			p, err := r.startProgram(t)
			if err != nil {
				return nil, err
			}
			return p, nil
		},
		WantHash: func() string { _, h := t.wanted(); return h },
		AfterExit: func() {
			cg.Kill(syscall.SIGKILL, 2*time.Second)
			removePidFile(dir)
		},
		// guest-init builds the sealed root, then starts the program:
		// the task is running once the program is (a child of
		// guest-init), not when guest-init is, so that "running" (and
		// `apply --wait`) never reports a program that has not started.
		Ready: &guest.Readiness{Check: programStarted, Every: 20 * time.Millisecond, Timeout: 30 * time.Second, Waiting: "sealing the guest, starting the program"},
		Gate:  r.cfg.Gate,
	})
	// An agent restart finds the program of the agent before still
	// running: watch it instead of starting a second copy.
	var adopted *proc
	if prev, err := readPidFile(dir); err == nil && prev.Alive() {
		if p, err := adopt(prev); err == nil {
			adopted = p
			r.log.Info("adopted running program", "task", g.Task, "pid", p.PID)
		}
	}
	r.tasks.Put(g.Task, t)
	if adopted != nil {
		go t.sup.Run(adopted)
	} else {
		go t.sup.Run(nil)
	}
	if adopted != nil && adopted.Hash == hash {
		return nil
	}
	return t.sup.WaitFirst(ctx)
}

// Remove implements guest.Runtime.
func (r *Runtime) Remove(ctx context.Context, task string) error {
	defer r.ops.Lock(task)()
	// A removed task ends at full speed: under a quota of a few
	// millicpu its program's exit (and guest-init's) took a second or
	// more, and removals of a large app queue behind each other. It has
	// its grace period at most, as before.
	if err := r.cgroup(task).Unthrottle(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		r.log.Warn("guest CPU quota not lifted for its end", "task", task, "err", err)
	}
	if t, ok := r.tasks.Take(task); ok {
		t.sup.Stop()
	}
	dir := guest.TaskDir(r.cfg.StateDir, task)
	// A program never adopted (left by an earlier agent, not ensured
	// since) is stopped the same way.
	if rec, err := readPidFile(dir); err == nil && rec.Alive() {
		if p, err := adopt(rec); err == nil {
			p.End(r.cfg.Grace)
			p.Release()
		}
	}
	var errs []error
	name := r.name(task)
	cg := r.cgroups.Named(r.cfg.CgroupParent, name)
	if !cg.Kill(syscall.SIGKILL, 5*time.Second) {
		errs = append(errs, fmt.Errorf("guest %s: processes left in cgroup after SIGKILL", task))
	}
	if err := cg.Remove(); err != nil {
		errs = append(errs, err)
	}
	if rec, err := guest.ReadRecord(dir, guest.RecordFile); err == nil && rec.Guest.HostIf != "" {
		// Deleting the netns would take the veth with it, unless a
		// process (say an `ip netns exec` shell) holds the namespace.
		if err := r.host.DeleteLink(rec.Guest.HostIf); err != nil {
			errs = append(errs, err)
		}
	}
	if err := hostns.Delete(guest.NetnsPrefix + name); err != nil {
		errs = append(errs, err)
	}
	return guest.RemoveState(task, dir, errs, r.log)
}

// Status implements guest.Runtime.
func (r *Runtime) Status(task string) api.TaskStatus {
	if t, ok := r.tasks.Get(task); ok {
		return t.sup.Status()
	}
	dir := guest.TaskDir(r.cfg.StateDir, task)
	_, err := os.Stat(recordPath(dir))
	var running *guest.ProcRecord
	if rec, err := readPidFile(dir); err == nil && rec.Alive() {
		running = &rec
	}
	return guest.UnsupervisedStatus(task, spec.RuntimeNetns, err == nil, running)
}

func (r *Runtime) cgroup(task string) *guest.Cgroup {
	return r.cgroups.Named(r.cfg.CgroupParent, r.name(task))
}

// name is task's machine-wide guest name: the one recorded in its state
// directory (kept for the guest's life, even across an agent upgrade that
// changed the naming), or the scoped one for a guest not made yet.
func (r *Runtime) name(task string) string {
	return guest.GuestNameIn(r.cfg.StateDir, guest.RecordFile, r.cfg.Scope, task)
}

func (r *Runtime) netnsName(task string) string { return guest.NetnsPrefix + r.name(task) }

// NetnsPath is the file of task's guest network namespace on this
// runtime: what a prober opens to run inside the guest.
func (r *Runtime) NetnsPath(task string) string { return hostns.Path(r.netnsName(task)) }

// NetnsPath is the file of the network namespace of task's guest on the
// netns runtime whose state directory is stateDir and scope is scope (as
// Config): the recorded name, or the scoped one for a guest not made yet.
// The agent's prober and the lab's tests find guests with it.
func NetnsPath(stateDir, scope, task string) string {
	return hostns.Path(guest.NetnsPrefix + guest.GuestNameIn(stateDir, guest.RecordFile, scope, task))
}

// programStarted tells whether guest-init (p) has started the task's
// program: it then has a child.
func programStarted(p guest.Program) bool {
	pid := p.Record().PID
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	return err == nil && len(strings.TrimSpace(string(b))) > 0
}
