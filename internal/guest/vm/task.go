package vm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/image"
	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/corridor-dev/corridor/internal/spec"
)

// stableRun is how long a VM must have run for its next crash to count
// as a first one again (backoff back to the minimum).
const stableRun = 30 * time.Second

// readyPoll is how often a booting VM's console is read for the ready
// line.
const readyPoll = 100 * time.Millisecond

// launch is one way of starting a task's QEMU.
type launch struct {
	args      []string
	accel     string
	hash      string
	resources spec.Resources // the class's: QEMU's cgroup gets these plus QEMUOverhead
}

// vmTask is one guest's QEMU under the shared supervisor (guest.Supervisor):
// it starts QEMU, is ready once the console shows the ready line, and is
// restarted with backoff when it exits or when what it should run changes.
type vmTask struct {
	r    *Runtime
	task string
	dir  string
	sup  *guest.Supervisor

	mu   sync.Mutex
	want launch
}

// newTask returns the task's supervisor, not yet running; adopted is the
// QEMU of an earlier agent, or nil.
func newTask(r *Runtime, task, dir string, want launch, adopted *qemuProc) *vmTask {
	t := &vmTask{r: r, task: task, dir: dir, want: want}
	accel := want.accel
	if adopted != nil {
		accel = adopted.Accel
	}
	t.sup = guest.NewSupervisor(guest.SupervisorConfig{
		Task: task, Runtime: "vm-" + accel, Noun: "VM",
		Changed: "command, environment or boot files changed",
		Log:     r.log, Policy: r.policy, StableRun: stableRun,
		Start: func() (guest.Program, error) {
			p, err := t.start(t.wanted())
			if err != nil {
				return nil, err
			}
			return p, nil
		},
		WantHash:  func() string { return t.wanted().hash },
		AfterExit: func() { os.Remove(filepath.Join(dir, pidFile)) },
		Gate:      r.cfg.Gate,
		Detail: func(p guest.Program) string {
			return "console: " + consoleTail(t.logPath(), p.(*qemuProc).LogOffset, consoleLines)
		},
		Ready: &guest.Readiness{
			Check: func(p guest.Program) bool {
				return consoleHas(t.logPath(), p.(*qemuProc).LogOffset, image.ReadyLine)
			},
			Every:   readyPoll,
			Timeout: r.cfg.BootTimeout,
		},
	})
	return t
}

func (t *vmTask) setWant(w launch) {
	t.mu.Lock()
	changed := t.want.hash != w.hash
	t.want = w
	t.mu.Unlock()
	if changed {
		t.sup.Poke()
	}
}

func (t *vmTask) wanted() launch {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.want
}

func (t *vmTask) logPath() string { return guest.LogPath(t.r.cfg.StateDir, t.task) }

// start launches QEMU in the host namespace.
func (t *vmTask) start(w launch) (*qemuProc, error) {
	t.sup.SetRuntime("vm-" + w.accel)
	log := t.logPath()
	qmp := filepath.Join(t.dir, qmpFile)
	os.Remove(qmp)
	lf, err := os.OpenFile(log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open console log: %w", err)
	}
	defer lf.Close()
	fmt.Fprintf(lf, "%s corridor: starting VM (%s)\n", time.Now().UTC().Format(time.RFC3339), w.accel)
	off := fileSize(log)
	cmd := exec.Command(t.r.cfg.QEMU, w.args...)
	// QEMU's own messages (a tap it cannot open, a bad kernel) land in
	// the same log as the console.
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = t.dir
	// Own session: QEMU outlives the agent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// QEMU opens the tap by name, so it must be forked in the host
	// namespace.
	if err := nsrun.DoHandle(t.r.host.NS(), cmd.Start); err != nil {
		return nil, fmt.Errorf("start %s: %w", t.r.cfg.QEMU, err)
	}
	t.confine(cmd.Process.Pid, w.resources)
	rec := qemuRecord{
		ProcRecord: guest.ProcRecord{ProcID: guest.ProcIDOf(cmd.Process.Pid), Hash: w.hash, Started: time.Now()},
		Accel:      w.accel, LogOffset: off,
	}
	if err := guest.WriteJSON(filepath.Join(t.dir, pidFile), rec, false); err != nil {
		t.r.log.Warn("pidfile not written: an agent restart will not find the VM", "task", t.task, "err", err)
	}
	return watchChild(cmd, rec, qmp), nil
}

// QEMUOverhead is what QEMU itself needs beyond the guest's RAM (its own
// code, device models, TCG's translation cache): the memory limit of its
// cgroup is the class's memory plus this, so that the guest gets all of
// what it asked for and a runaway QEMU is still bounded.
const QEMUOverhead spec.Bytes = 256 << 20

// confine puts QEMU into the task's cgroup with the class's CPU limit and
// a memory limit of the guest's RAM plus QEMUOverhead. A host without
// usable cgroups runs the VM unconfined, and says so.
func (t *vmTask) confine(pid int, r spec.Resources) {
	cg, err := guest.OpenCgroup(guest.DefaultCgroupParent, t.r.name(t.task))
	if err == nil {
		if r.Memory > 0 {
			r.Memory += QEMUOverhead
		}
		err = cg.Ensure(r)
	}
	if err == nil {
		err = cg.AddProc(pid)
	}
	if err != nil {
		t.r.log.Warn("QEMU runs without a cgroup: its CPU is not limited", "task", t.task, "err", err)
	}
}

// unconfine removes the cgroup of the guest named name (its
// guest.Record.GuestName) once QEMU is gone.
func unconfine(name string) error {
	cg, err := guest.OpenCgroup(guest.DefaultCgroupParent, name)
	if err != nil {
		return nil // no cgroups here, so none was made
	}
	return cg.Remove()
}
