package guest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ProcID names one process for good, across agent restarts. A PID alone
// may have been reused by then; the PID plus the kernel's start time
// (field 22 of /proc/<pid>/stat) may not.
type ProcID struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"` // clock ticks after boot
}

// ProcIDOf names the running process pid. Its StartTime is 0 if the
// process is already gone, and then it is never Alive.
func ProcIDOf(pid int) ProcID {
	st, _ := procStartTime(pid)
	return ProcID{PID: pid, StartTime: st}
}

// Alive tells whether the process still runs (a zombie does not).
func (id ProcID) Alive() bool {
	if id.PID <= 0 {
		return false
	}
	st, err := procStartTime(id.PID)
	return err == nil && st == id.StartTime
}

// ProcRecord is what a runtime records of a running program (its
// pidfile), so that the next agent can adopt it.
type ProcRecord struct {
	ProcID
	Hash    string    `json:"hash"` // of what it runs (command, environment, boot files)
	Started time.Time `json:"started"`
}

// procStartTime reads the start time of pid from /proc; it fails for a
// process that is gone or is a zombie (exited, not yet reaped).
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields that follow start after its last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("guest: malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("guest: malformed /proc/%d/stat", pid)
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, fmt.Errorf("guest: process %d has exited", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Exit follows a watched process to its end: its own child, or one
// adopted from an earlier agent. Runtimes share it; what the program is
// and how to ask it to stop is theirs.
type Exit struct {
	who    string        // names the program in Status ("" for none)
	done   chan struct{} // closed once the process is gone
	status string        // why it ended; set before done is closed
	quit   chan struct{} // closed to stop watching an adopted process
}

func newExit(who string) *Exit {
	return &Exit{who: who, done: make(chan struct{}), quit: make(chan struct{})}
}

// named puts the program's name, if any, in front of what happened.
func (e *Exit) named(what string) string {
	if e.who == "" {
		return what
	}
	return e.who + " " + what
}

// WaitChild follows a program this process started: Wait reaps it and
// gives its exit status. who names it in Status, e.g. "QEMU".
func WaitChild(cmd *exec.Cmd, who string) *Exit {
	e := newExit(who)
	go func() {
		err := cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
			e.status = e.named("exited with status 0")
		case errors.As(err, &ee):
			e.status = e.named(describeWait(ee.Sys().(syscall.WaitStatus)))
		case who == "":
			e.status = err.Error()
		default:
			e.status = who + ": " + err.Error()
		}
		close(e.done)
	}()
	return e
}

func describeWait(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "killed by signal " + ws.Signal().String()
	}
	return "exited with status " + strconv.Itoa(ws.ExitStatus())
}

// WatchAdopted follows a process started by an earlier agent. It is not
// our child, so its exit status cannot be had; a pidfd tells when it ends.
// It fails when the process is no longer the one id names.
func WatchAdopted(id ProcID, who string) (*Exit, error) {
	fd, err := unix.PidfdOpen(id.PID, 0)
	if err != nil {
		return nil, fmt.Errorf("guest: pidfd_open %d: %w", id.PID, err)
	}
	// Checked after opening the pidfd, which pins the identity: if the
	// start time still matches, the pidfd refers to our process.
	if !id.Alive() {
		unix.Close(fd)
		return nil, fmt.Errorf("guest: process %d is gone", id.PID)
	}
	lost := "lost track: "
	if who != "" {
		lost = "lost track of " + who + ": "
	}
	e := newExit(who)
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			select {
			case <-e.quit:
				return
			default:
			}
			// A timeout, so that Release is noticed.
			n, err := unix.Poll(fds, 500)
			if err != nil && !errors.Is(err, unix.EINTR) {
				e.status = lost + err.Error()
				break
			}
			if n > 0 {
				e.status = e.named("exited (status unknown: started by an earlier agent)")
				break
			}
		}
		close(e.done)
	}()
	return e, nil
}

// Done is closed once the process is gone.
func (e *Exit) Done() <-chan struct{} { return e.done }

// Gone tells whether the process has ended.
func (e *Exit) Gone() bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

// Status says why the process ended; valid once Done is closed.
func (e *Exit) Status() string { return e.status }

// Release stops watching without touching the process (agent shutdown).
// An adopted process's Done then never closes.
func (e *Exit) Release() {
	select {
	case <-e.quit:
	default:
		close(e.quit)
	}
}

// Stop ends the process: term asks it to stop, kill ends it once grace
// has passed; Stop then waits (at most 5 more seconds) for it to be gone.
func (e *Exit) Stop(grace time.Duration, term, kill func()) {
	if e.Gone() {
		return
	}
	term()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-e.done:
		return
	case <-t.C:
	}
	kill()
	select {
	case <-e.done:
	case <-time.After(5 * time.Second):
	}
}
