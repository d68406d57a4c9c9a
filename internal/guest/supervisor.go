package guest

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// Defaults of the restart and stop policy.
const (
	DefaultBackoffMin = 200 * time.Millisecond
	DefaultBackoffMax = 30 * time.Second
	DefaultGrace      = 5 * time.Second
	// stableRun is how long a program must have run for its next crash to
	// be treated as a first one again (backoff back to the minimum).
	stableRun = 10 * time.Second
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

// supervisor keeps one task's program running: it starts it, restarts it
// with exponential backoff when it exits, restarts it when the wanted
// command or environment changes, and stops it on request. It is shared
// by the runtimes: what "start" means (a process in a netns, a QEMU) is
// theirs.
type supervisor struct {
	task, runtime string
	log           *slog.Logger
	min, max      time.Duration
	grace         time.Duration

	// start starts the wanted program; hash is what it runs.
	start func() (*proc, error)
	// wantHash is the hash of the program currently wanted.
	wantHash func() string
	// afterExit clears what the program left behind (processes it forked
	// that survived it) before the next start.
	afterExit func()

	wake      chan struct{} // the wanted program changed
	stopc     chan struct{} // stop the program and return
	detachc   chan struct{} // return, leaving the program running
	done      chan struct{} // closed when run returns
	firstTry  chan struct{} // closed after the first start attempt
	firstErr  error
	closeOnce sync.Once

	mu     sync.Mutex
	status api.TaskStatus
	pid    int
}

func newSupervisor(task, runtime string, log *slog.Logger, min, max, grace time.Duration) *supervisor {
	return &supervisor{
		task: task, runtime: runtime, log: log, min: min, max: max, grace: grace,
		wake:     make(chan struct{}, 1),
		stopc:    make(chan struct{}),
		detachc:  make(chan struct{}),
		done:     make(chan struct{}),
		firstTry: make(chan struct{}),
		status:   api.TaskStatus{Task: task, Runtime: runtime, State: api.TaskStarting, Since: time.Now()},
	}
}

func (s *supervisor) set(state, msg string, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status.State != state {
		s.status.Since = time.Now()
	}
	s.status.State, s.status.Message, s.pid = state, msg, pid
}

// Status is a snapshot of the task's state.
func (s *supervisor) Status() api.TaskStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// PID is the running program's PID, 0 when none runs.
func (s *supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

// Poke tells the supervisor that the wanted program may have changed.
func (s *supervisor) Poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Stop stops the program (SIGTERM, SIGKILL after grace) and waits.
func (s *supervisor) Stop() {
	s.closeOnce.Do(func() { close(s.stopc) })
	<-s.done
}

// Detach ends supervision and leaves the program running, for an agent
// that shuts down: the next agent adopts it.
func (s *supervisor) Detach() {
	s.closeOnce.Do(func() { close(s.detachc) })
	<-s.done
}

func (s *supervisor) markFirst(err error) {
	select {
	case <-s.firstTry:
	default:
		s.firstErr = err
		close(s.firstTry)
	}
}

// run is the supervision loop. p is an adopted program, or nil.
func (s *supervisor) run(p *proc) {
	defer close(s.done)
	defer s.markFirst(nil)
	delay := s.min
	for {
		if p != nil && p.Hash != s.wantHash() {
			s.log.Info("program changed, restarting", "task", s.task, "pid", p.PID)
			s.set(api.TaskStarting, "command or environment changed; restarting", p.PID)
			p.stop(s.grace)
			s.afterExit()
			p, delay = nil, s.min
		}
		if p == nil {
			np, err := s.start()
			if err != nil {
				s.log.Warn("program did not start", "task", s.task, "err", err, "retry_in", delay)
				s.set(api.TaskFailed, fmt.Sprintf("start failed: %v; retrying in %s", err, delay), 0)
				s.markFirst(err)
				if !s.sleep(delay) {
					return
				}
				delay = NextBackoff(delay, s.min, s.max)
				continue
			}
			p = np
			s.log.Info("program started", "task", s.task, "pid", p.PID)
		}
		s.set(api.TaskRunning, "", p.PID)
		s.markFirst(nil)
		select {
		case <-p.Done():
			ran := time.Since(p.Started)
			if ran >= stableRun {
				delay = s.min
			}
			msg := fmt.Sprintf("%s after %s; restarting in %s", p.Status(), ran.Round(time.Millisecond), delay)
			s.log.Warn("program ended", "task", s.task, "pid", p.PID, "status", p.Status(), "restart_in", delay)
			s.set(api.TaskFailed, msg, 0)
			s.mu.Lock()
			s.status.Restarts++
			s.mu.Unlock()
			s.afterExit()
			p = nil
			if !s.sleep(delay) {
				return
			}
			delay = NextBackoff(delay, s.min, s.max)
		case <-s.wake:
		case <-s.stopc:
			s.set(api.TaskStopped, "stopping", p.PID)
			p.stop(s.grace)
			p.Release()
			s.set(api.TaskStopped, "", 0)
			return
		case <-s.detachc:
			p.Release()
			return
		}
	}
}

// sleep waits d; it returns false when the supervisor must return, and
// true early when the wanted program changed (no reason to wait then).
func (s *supervisor) sleep(d time.Duration) bool {
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
