package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pidFile is the name of the record of a task's running program.
const pidFile = "pid.json"

// procRecord identifies a running program across agent restarts. A PID
// alone may have been reused by then; the PID plus the kernel's start
// time (field 22 of /proc/<pid>/stat) names one process for good.
type procRecord struct {
	PID       int       `json:"pid"`
	StartTime uint64    `json:"startTime"` // clock ticks after boot
	Hash      string    `json:"hash"`      // of the command and environment it runs
	Started   time.Time `json:"started"`
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

func writePidFile(dir string, rec procRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, pidFile), b)
}

func readPidFile(dir string) (procRecord, error) {
	var rec procRecord
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("guest: %s: %w", filepath.Join(dir, pidFile), err)
	}
	return rec, nil
}

// alive tells whether the recorded process still runs.
func (rec procRecord) alive() bool {
	if rec.PID <= 0 {
		return false
	}
	st, err := procStartTime(rec.PID)
	return err == nil && st == rec.StartTime
}

// proc is a running program the runtime watches, either its own child or
// one adopted from an earlier agent.
type proc struct {
	procRecord
	exited chan struct{} // closed once the program is gone
	status string        // why it ended; set before exited is closed
	quit   chan struct{} // closed to stop watching an adopted program
}

// watchChild watches a program this process started: Wait reaps it and
// gives its exit status.
func watchChild(cmd *exec.Cmd, rec procRecord) *proc {
	p := &proc{procRecord: rec, exited: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		switch {
		case err == nil:
			p.status = "exited with status 0"
		default:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				p.status = describeWait(ee.Sys().(syscall.WaitStatus))
			} else {
				p.status = err.Error()
			}
		}
		close(p.exited)
	}()
	return p
}

func describeWait(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "killed by signal " + ws.Signal().String()
	}
	return "exited with status " + strconv.Itoa(ws.ExitStatus())
}

// adopt watches a program started by an earlier agent. It is not our
// child, so its exit status cannot be had; a pidfd tells when it ends.
func adopt(rec procRecord) (*proc, error) {
	fd, err := unix.PidfdOpen(rec.PID, 0)
	if err != nil {
		return nil, fmt.Errorf("guest: pidfd_open %d: %w", rec.PID, err)
	}
	// Checked after opening the pidfd, which pins the identity: if the
	// start time still matches, the pidfd refers to our process.
	if !rec.alive() {
		unix.Close(fd)
		return nil, fmt.Errorf("guest: process %d is gone", rec.PID)
	}
	p := &proc{procRecord: rec, exited: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			select {
			case <-p.quit:
				return
			default:
			}
			n, err := unix.Poll(fds, 500)
			if err != nil && !errors.Is(err, unix.EINTR) {
				p.status = "lost track: " + err.Error()
				break
			}
			if n > 0 {
				p.status = "exited (status unknown: started by an earlier agent)"
				break
			}
		}
		close(p.exited)
	}()
	return p, nil
}

// release stops watching without touching the program (agent shutdown).
func (p *proc) release() {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
}

// stop ends the program's process group: SIGTERM, then SIGKILL once grace
// has passed. The program runs in its own session, so its PID is also its
// process group ID.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = syscall.Kill(-p.PID, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
		return
	case <-t.C:
	}
	_ = syscall.Kill(-p.PID, syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
	}
}

// writeFileAtomic replaces path with b so that a reader (or a crash)
// never sees half a file.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("guest: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("guest: write %s: %w", path, err)
	}
	return nil
}
