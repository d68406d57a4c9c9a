package guest

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// Defaults of the restart and stop policy.
const (
	DefaultBackoffMin = 200 * time.Millisecond
	DefaultBackoffMax = 30 * time.Second
	DefaultGrace      = 5 * time.Second
	// DefaultStableRun is how long a program must have run for its next
	// crash to be treated as a first one again (backoff back to the
	// minimum).
	DefaultStableRun = 10 * time.Second
)

// NextBackoff doubles the delay before the next restart, within [lo, hi].
func NextBackoff(cur, lo, hi time.Duration) time.Duration {
	if cur < lo {
		return lo
	}
	if cur > hi/2 {
		return hi
	}
	return cur * 2
}

// Policy is a runtime's restart and stop policy.
type Policy struct {
	BackoffMin, BackoffMax time.Duration
	Grace                  time.Duration // between asking a program to stop and killing it
}

// WithDefaults fills the zero values (grace: the runtime's default) and
// checks that the bounds are in order.
func (p Policy) WithDefaults(grace time.Duration) (Policy, error) {
	if p.BackoffMin <= 0 {
		p.BackoffMin = DefaultBackoffMin
	}
	if p.BackoffMax <= 0 {
		p.BackoffMax = DefaultBackoffMax
	}
	if p.BackoffMax < p.BackoffMin {
		return p, fmt.Errorf("BackoffMax %s is below BackoffMin %s", p.BackoffMax, p.BackoffMin)
	}
	if p.Grace <= 0 {
		p.Grace = grace
	}
	return p, nil
}

// Program is one run of a supervised program, as its runtime started or
// adopted it: the netns runtime's process group, the VM runtime's QEMU.
type Program interface {
	// Record is which process it is, what it runs and since when.
	Record() ProcRecord
	// Done is closed once it has ended; Status then says why.
	Done() <-chan struct{}
	Status() string
	// End asks it to stop, kills it once grace has passed, and waits.
	End(grace time.Duration)
	// Kill ends it at once.
	Kill()
	// Release stops watching it and leaves it running.
	Release()
}

// Readiness is how a supervisor tells that a started program has come up
// (a VM's console shows the ready line). Until then the task is
// starting; a program not ready within Timeout is killed and restarted.
type Readiness struct {
	Check   func(Program) bool
	Every   time.Duration // how often Check is asked
	Timeout time.Duration
	// Waiting is the status message until ready (default "booting").
	Waiting string
}

// SupervisorConfig says what a Supervisor keeps running and how.
type SupervisorConfig struct {
	Task string
	// Runtime is TaskStatus.Runtime until SetRuntime changes it.
	Runtime string
	// Noun names the program in the log: "program", "VM".
	Noun string
	// Changed says, in the status, why a change of the wanted program
	// restarts it ("command or environment changed").
	Changed string
	Log     *slog.Logger
	Policy  Policy
	// StableRun: default DefaultStableRun.
	StableRun time.Duration

	// Start starts the wanted program.
	Start func() (Program, error)
	// WantHash is the hash of the program currently wanted; a running
	// program whose Record().Hash differs is restarted.
	WantHash func() string
	// AfterExit, if set, clears what a program left behind (processes it
	// forked, its pidfile) once it has ended or been stopped.
	AfterExit func()
	// Detail, if set, is added to the status of a program that ended
	// or was not ready ("console: ...").
	Detail func(Program) string
	// Ready, if set, makes a started program "starting" until it is
	// ready; without it a started program is running.
	Ready *Readiness
	// Gate, if set, bounds the programs starting at once (shared by the
	// agent's supervisors): this one waits for a slot before it starts
	// its program and holds it until the program is ready or ends.
	Gate *Gate
}

// Supervisor keeps one task's program running: it starts it, restarts it
// with exponential backoff when it ends, restarts it when the wanted
// program changes, and stops it on request. Both runtimes use it; what
// "start" means (a process in a netns, a QEMU) and when a program is
// ready are theirs.
type Supervisor struct {
	cfg SupervisorConfig

	wake      chan struct{} // the wanted program changed
	stopc     chan struct{} // stop the program and return
	detachc   chan struct{} // return, leaving the program running
	done      chan struct{} // closed when Run returns
	firstTry  chan struct{} // closed after the first start attempt
	firstErr  error
	closeOnce sync.Once

	mu     sync.Mutex
	status api.TaskStatus
	pid    int
}

// NewSupervisor returns a supervisor; Run supervises.
func NewSupervisor(cfg SupervisorConfig) *Supervisor {
	if cfg.StableRun <= 0 {
		cfg.StableRun = DefaultStableRun
	}
	if cfg.Noun == "" {
		cfg.Noun = "program"
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Supervisor{
		cfg:      cfg,
		wake:     make(chan struct{}, 1),
		stopc:    make(chan struct{}),
		detachc:  make(chan struct{}),
		done:     make(chan struct{}),
		firstTry: make(chan struct{}),
		status:   api.TaskStatus{Task: cfg.Task, Runtime: cfg.Runtime, State: api.TaskStarting, Since: time.Now()},
	}
}

func (s *Supervisor) set(state, msg string, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status.State != state {
		s.status.Since = time.Now()
	}
	s.status.State, s.status.Message, s.pid = state, msg, pid
}

// SetRuntime changes TaskStatus.Runtime (the VM runtime says which
// accelerator a QEMU runs with).
func (s *Supervisor) SetRuntime(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Runtime = name
}

// Status is a snapshot of the task's state.
func (s *Supervisor) Status() api.TaskStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// PID is the running program's PID, 0 when none runs.
func (s *Supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

// Poke tells the supervisor that the wanted program may have changed.
func (s *Supervisor) Poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Stop stops the program (End with the policy's grace) and waits.
func (s *Supervisor) Stop() {
	s.closeOnce.Do(func() { close(s.stopc) })
	<-s.done
}

// Detach ends supervision and leaves the program running, for an agent
// that shuts down: the next agent adopts it.
func (s *Supervisor) Detach() {
	s.closeOnce.Do(func() { close(s.detachc) })
	<-s.done
}

// WaitFirst waits for the first start attempt (or for an adopted program
// to be seen running) and returns its error, or ctx's.
func (s *Supervisor) WaitFirst(ctx context.Context) error {
	select {
	case <-s.firstTry:
		if s.firstErr != nil {
			return fmt.Errorf("guest %s: %w (retrying with backoff)", s.cfg.Task, s.firstErr)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Supervisor) markFirst(err error) {
	select {
	case <-s.firstTry:
	default:
		s.firstErr = err
		close(s.firstTry)
	}
}

func (s *Supervisor) afterExit() {
	if s.cfg.AfterExit != nil {
		s.cfg.AfterExit()
	}
}

// detail is Detail's text after "; ", or "".
func (s *Supervisor) detail(p Program) string {
	if s.cfg.Detail == nil {
		return ""
	}
	if d := s.cfg.Detail(p); d != "" {
		return "; " + d
	}
	return ""
}

// Run is the supervision loop. p is an adopted program, or nil. It
// returns after Stop or Detach.
func (s *Supervisor) Run(p Program) {
	defer close(s.done)
	defer s.markFirst(nil)
	c, log := s.cfg, s.cfg.Log
	delay := c.Policy.BackoffMin
	for {
		if p != nil && p.Record().Hash != c.WantHash() {
			log.Info(c.Noun+" changed, restarting", "task", c.Task, "pid", p.Record().PID)
			s.set(api.TaskStarting, c.Changed+"; restarting", p.Record().PID)
			p.End(c.Policy.Grace)
			s.afterExit()
			p, delay = nil, c.Policy.BackoffMin
		}
		var sl slot
		if p == nil {
			if c.Gate.Size() > 0 && c.Gate.Starting() >= c.Gate.Size() {
				s.set(api.TaskStarting, fmt.Sprintf("waiting to start: %d programs are starting on this host (at most %d at once)", c.Gate.Starting(), c.Gate.Size()), 0)
				// The start is queued: whoever waits for the first
				// attempt (the agent's reconcile, guest by guest) goes
				// on; the status says how it ends.
				s.markFirst(nil)
			}
			if !c.Gate.acquire(s.stopc, s.detachc) {
				select {
				case <-s.stopc:
					s.set(api.TaskStopped, "", 0)
				default:
				}
				return
			}
			sl = slot{g: c.Gate, held: c.Gate != nil}
			np, err := c.Start()
			if err != nil {
				sl.release()
				log.Warn(c.Noun+" did not start", "task", c.Task, "err", err, "retry_in", delay)
				s.set(api.TaskFailed, fmt.Sprintf("start failed: %v; retrying in %s", err, delay), 0)
				s.markFirst(err)
				if !s.sleep(delay) {
					return
				}
				delay = NextBackoff(delay, c.Policy.BackoffMin, c.Policy.BackoffMax)
				continue
			}
			p = np
			log.Info(c.Noun+" started", "task", c.Task, "pid", p.Record().PID)
		}
		ready := c.Ready == nil || c.Ready.Check(p)
		if ready {
			sl.release()
			s.set(api.TaskRunning, "", p.Record().PID)
		} else {
			msg := c.Ready.Waiting
			if msg == "" {
				msg = "booting"
			}
			s.set(api.TaskStarting, msg, p.Record().PID)
		}
		s.markFirst(nil)
		ended, killed, ok := s.watch(p, ready, sl.release)
		sl.release()
		if !ok {
			return
		}
		if !ended {
			continue // the wanted program may have changed
		}
		rec := p.Record()
		ran := time.Since(rec.Started)
		if ran >= c.StableRun {
			delay = c.Policy.BackoffMin
		}
		why := p.Status()
		if killed != "" {
			why = killed
		}
		msg := fmt.Sprintf("%s after %s; restarting in %s%s", why, ran.Round(time.Millisecond), delay, s.detail(p))
		log.Warn(c.Noun+" ended", "task", c.Task, "pid", rec.PID, "status", why, "restart_in", delay)
		s.set(api.TaskFailed, msg, 0)
		s.mu.Lock()
		s.status.Restarts++
		s.mu.Unlock()
		s.afterExit()
		p = nil
		if !s.sleep(delay) {
			return
		}
		delay = NextBackoff(delay, c.Policy.BackoffMin, c.Policy.BackoffMax)
	}
}

// watch waits on a running program: for it to be ready (while it is
// not), to end, for a change of what it should run, or for Stop or
// Detach. ended says the program is gone (killed: why, when the
// supervisor killed it); ok is false when Run must return.
func (s *Supervisor) watch(p Program, ready bool, onReady func()) (ended bool, killed string, ok bool) {
	c := s.cfg
	var poll <-chan time.Time
	var deadline time.Time
	if !ready {
		t := time.NewTicker(c.Ready.Every)
		defer t.Stop()
		poll, deadline = t.C, time.Now().Add(c.Ready.Timeout)
	}
	for {
		select {
		case <-p.Done():
			return true, "", true
		case <-s.wake:
			return false, "", true
		case <-s.stopc:
			s.set(api.TaskStopped, "stopping", p.Record().PID)
			p.End(c.Policy.Grace)
			p.Release()
			s.afterExit()
			s.set(api.TaskStopped, "", 0)
			return false, "", false
		case <-s.detachc:
			p.Release()
			return false, "", false
		case <-poll:
			rec := p.Record()
			if c.Ready.Check(p) {
				poll = nil
				onReady()
				s.set(api.TaskRunning, "", rec.PID)
				c.Log.Info(c.Noun+" ready", "task", c.Task, "pid", rec.PID, "boot", time.Since(rec.Started).Round(time.Millisecond))
				continue
			}
			if time.Now().After(deadline) {
				c.Log.Warn(c.Noun+" not ready in time, killing it", "task", c.Task, "timeout", c.Ready.Timeout)
				s.set(api.TaskFailed, fmt.Sprintf("not ready within %s%s", c.Ready.Timeout, s.detail(p)), 0)
				p.Kill()
				<-p.Done()
				return true, fmt.Sprintf("not ready within %s (killed)", c.Ready.Timeout), true
			}
		}
	}
}

// sleep waits d; it returns false when Run must return, and true early
// when the wanted program changed (no reason to wait then).
func (s *Supervisor) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.wake:
		return true
	case <-s.stopc:
		s.set(api.TaskStopped, "", 0)
		return false
	case <-s.detachc:
		return false
	}
}

// UnsupervisedStatus is the status of a task no supervisor of this agent
// watches (yet): pending without a record, running while its recorded
// program (running, nil if none is alive) runs, stopped otherwise.
func UnsupervisedStatus(task, runtime string, recorded bool, running *ProcRecord) api.TaskStatus {
	st := api.TaskStatus{Task: task, Runtime: runtime, State: api.TaskPending, Message: "no such guest"}
	switch {
	case !recorded:
	case running != nil:
		st.State, st.Message, st.Since = api.TaskRunning, "not yet supervised by this agent", running.Started
	default:
		st.State, st.Message = api.TaskStopped, "not running"
	}
	return st
}

// Tasks is a runtime's supervised tasks by task ID; T is the runtime's
// own record of one (what it wants and its Supervisor).
type Tasks[T any] struct {
	mu sync.Mutex
	m  map[string]T
}

// Get returns the task's entry and whether there is one.
func (ts *Tasks[T]) Get(task string) (T, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t, ok := ts.m[task]
	return t, ok
}

// Put sets the task's entry.
func (ts *Tasks[T]) Put(task string, t T) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.m == nil {
		ts.m = map[string]T{}
	}
	ts.m[task] = t
}

// Take removes the task's entry and returns it.
func (ts *Tasks[T]) Take(task string) (T, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t, ok := ts.m[task]
	delete(ts.m, task)
	return t, ok
}

// TakeAll removes every entry and returns them.
func (ts *Tasks[T]) TakeAll() []T {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	out := make([]T, 0, len(ts.m))
	for _, t := range ts.m {
		out = append(out, t)
	}
	ts.m = nil
	return out
}

// Names lists the supervised tasks, sorted.
func (ts *Tasks[T]) Names() []string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return slices.Sorted(maps.Keys(ts.m))
}
