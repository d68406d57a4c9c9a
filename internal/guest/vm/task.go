package vm

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/atomicfile"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/image"
	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/corridor-dev/corridor/internal/spec"
)

// stableRun is how long a VM must have run for its next crash to count
// as a first one again (backoff back to the minimum).
const stableRun = 30 * time.Second

// launch is one way of starting a task's QEMU.
type launch struct {
	args      []string
	accel     string
	hash      string
	resources spec.Resources // the class's: QEMU's cgroup gets these plus QEMUOverhead
}

// vmTask supervises one guest's QEMU: starts it, watches the console for
// the ready line, restarts it with backoff when it exits, restarts it
// when what it should run changes, and stops it on request.
type vmTask struct {
	r    *Runtime
	task string
	dir  string

	wake     chan struct{}
	stopc    chan struct{}
	detachc  chan struct{}
	done     chan struct{}
	firstTry chan struct{}
	firstErr error
	once     sync.Once

	mu   sync.Mutex
	want launch
	st   api.TaskStatus
}

func newTask(r *Runtime, task, dir string, want launch) *vmTask {
	return &vmTask{
		r: r, task: task, dir: dir, want: want,
		wake: make(chan struct{}, 1), stopc: make(chan struct{}), detachc: make(chan struct{}),
		done: make(chan struct{}), firstTry: make(chan struct{}),
		st: api.TaskStatus{Task: task, Runtime: "vm-" + want.accel, State: api.TaskStarting, Since: time.Now()},
	}
}

func (t *vmTask) setWant(w launch) {
	t.mu.Lock()
	changed := t.want.hash != w.hash
	t.want = w
	t.mu.Unlock()
	if changed {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

func (t *vmTask) wanted() launch {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.want
}

func (t *vmTask) set(state, msg, accel string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.st.State != state {
		t.st.Since = time.Now()
	}
	t.st.State, t.st.Message = state, msg
	if accel != "" {
		t.st.Runtime = "vm-" + accel
	}
}

func (t *vmTask) status() api.TaskStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.st
}

func (t *vmTask) stop() {
	t.once.Do(func() { close(t.stopc) })
	<-t.done
}

func (t *vmTask) detach() {
	t.once.Do(func() { close(t.detachc) })
	<-t.done
}

func (t *vmTask) markFirst(err error) {
	select {
	case <-t.firstTry:
	default:
		t.firstErr = err
		close(t.firstTry)
	}
}

func (t *vmTask) logPath() string { return filepath.Join(t.dir, "task.log") }

// start launches QEMU in the host namespace.
func (t *vmTask) start(w launch) (*qemuProc, error) {
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
	rec := qemuRecord{ProcID: guest.ProcIDOf(cmd.Process.Pid), Hash: w.hash, Accel: w.accel, LogOffset: off, Started: time.Now()}
	if b, err := json.Marshal(rec); err == nil {
		if err := atomicfile.Write(filepath.Join(t.dir, pidFile), b, 0o644); err != nil {
			t.r.log.Warn("pidfile not written: an agent restart will not find the VM", "task", t.task, "err", err)
		}
	}
	return watchChild(cmd, rec, qmp), nil
}

// run is the supervision loop; p is an adopted QEMU or nil.
func (t *vmTask) run(p *qemuProc) {
	defer close(t.done)
	defer t.markFirst(nil)
	log := t.r.log
	delay := t.r.cfg.BackoffMin
	for {
		w := t.wanted()
		if p != nil && p.Hash != w.hash {
			log.Info("VM changed, restarting", "task", t.task, "pid", p.PID)
			t.set(api.TaskStarting, "command, environment or boot files changed; restarting", "")
			p.stop(t.r.cfg.Grace)
			p, delay = nil, t.r.cfg.BackoffMin
		}
		if p == nil {
			np, err := t.start(w)
			t.markFirst(err)
			if err != nil {
				log.Warn("VM did not start", "task", t.task, "err", err, "retry_in", delay)
				t.set(api.TaskFailed, fmt.Sprintf("start failed: %v; retrying in %s", err, delay), w.accel)
				if !t.sleep(delay) {
					return
				}
				delay = guest.NextBackoff(delay, t.r.cfg.BackoffMin, t.r.cfg.BackoffMax)
				continue
			}
			p = np
			log.Info("VM started", "task", t.task, "pid", p.PID, "accel", w.accel)
		}
		ready := consoleHas(t.logPath(), p.LogOffset, image.ReadyLine)
		if ready {
			t.set(api.TaskRunning, "", p.Accel)
		} else {
			t.set(api.TaskStarting, "booting", p.Accel)
		}
		if !t.watch(p, ready) {
			return
		}
		if p.Gone() {
			ran := time.Since(p.Started)
			if ran >= stableRun {
				delay = t.r.cfg.BackoffMin
			}
			t.mu.Lock()
			t.st.Restarts++
			t.mu.Unlock()
			tail := consoleTail(t.logPath(), p.LogOffset, consoleLines)
			msg := fmt.Sprintf("%s after %s; restarting in %s; console: %s", p.status(), ran.Round(time.Millisecond), delay, tail)
			log.Warn("VM ended", "task", t.task, "pid", p.PID, "status", p.status(), "restart_in", delay)
			t.set(api.TaskFailed, msg, "")
			p = nil
			if !t.sleep(delay) {
				return
			}
			delay = guest.NextBackoff(delay, t.r.cfg.BackoffMin, t.r.cfg.BackoffMax)
		}
	}
}

// watch waits on a running QEMU: for the ready line while booting, for
// its exit, for a change of what it should run, or for stop or detach.
// It returns false when run must return.
func (t *vmTask) watch(p *qemuProc, ready bool) bool {
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	deadline := time.Now().Add(t.r.cfg.BootTimeout)
	for {
		select {
		case <-p.Done():
			return true
		case <-t.wake:
			return true
		case <-t.stopc:
			t.set(api.TaskStopped, "stopping", "")
			p.stop(t.r.cfg.Grace)
			p.Release()
			os.Remove(filepath.Join(t.dir, pidFile))
			t.set(api.TaskStopped, "", "")
			return false
		case <-t.detachc:
			p.Release()
			return false
		case <-poll.C:
			if ready {
				continue
			}
			if consoleHas(t.logPath(), p.LogOffset, image.ReadyLine) {
				ready = true
				t.set(api.TaskRunning, "", p.Accel)
				t.r.log.Info("VM ready", "task", t.task, "pid", p.PID, "boot", time.Since(p.Started).Round(time.Millisecond))
				continue
			}
			if time.Now().After(deadline) {
				tail := consoleTail(t.logPath(), p.LogOffset, consoleLines)
				t.r.log.Warn("VM not ready in time, killing it", "task", t.task, "timeout", t.r.cfg.BootTimeout)
				t.set(api.TaskFailed, fmt.Sprintf("not ready within %s; console: %s", t.r.cfg.BootTimeout, tail), "")
				_ = syscall.Kill(p.PID, syscall.SIGKILL)
				<-p.Done()
				p.killed = fmt.Sprintf("not ready within %s (killed)", t.r.cfg.BootTimeout)
				return true
			}
		}
	}
}

// sleep waits d; false means run must return.
func (t *vmTask) sleep(d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-t.wake:
		return true
	case <-t.stopc:
		t.set(api.TaskStopped, "", "")
		return false
	case <-t.detachc:
		return false
	}
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
	cg, err := guest.OpenCgroup(guest.DefaultCgroupParent, t.task)
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

// unconfine removes the task's cgroup once QEMU is gone.
func unconfine(task string) error {
	cg, err := guest.OpenCgroup(guest.DefaultCgroupParent, task)
	if err != nil {
		return nil // no cgroups here, so none was made
	}
	return cg.Remove()
}
