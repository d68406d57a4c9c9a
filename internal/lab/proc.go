package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/corridor-dev/corridor/internal/hostns"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procInfo is what /proc says about one process.
type procInfo struct {
	PID       int
	PPID      int
	State     byte // R, S, D, Z...: field 3 of /proc/<pid>/stat
	StartTime uint64
	Args      []string
	// NetNS is the inode of the process's network namespace; 0 when it
	// could not be read (the process is gone or a kernel thread).
	NetNS uint64
}

// readProc reads /proc/<pid>. It returns os.ErrNotExist (wrapped) when the
// process is gone.
func readProc(root string, pid int) (procInfo, error) {
	dir := root + "/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return procInfo{}, err
	}
	state, ppid, start, err := parseStat(stat)
	if err != nil {
		return procInfo{}, fmt.Errorf("lab: %s/stat: %w", dir, err)
	}
	info := procInfo{PID: pid, PPID: ppid, State: state, StartTime: start}
	if cmd, err := os.ReadFile(dir + "/cmdline"); err == nil {
		info.Args = splitCmdline(cmd)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir+"/ns/net", &st); err == nil {
		info.NetNS = st.Ino
	}
	return info, nil
}

// parseStat returns the state (field 3), parent PID (field 4) and start
// time (field 22) of a /proc/<pid>/stat line. The command name (field 2)
// may hold spaces and parentheses, so fields are counted from the last ')'.
func parseStat(b []byte) (state byte, ppid int, start uint64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, errors.New("no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 20 {
		return 0, 0, 0, fmt.Errorf("%d fields after the command name, want at least 20", len(f))
	}
	state = f[0][0]
	if ppid, err = strconv.Atoi(f[1]); err != nil {
		return 0, 0, 0, fmt.Errorf("ppid: %w", err)
	}
	if start, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return 0, 0, 0, fmt.Errorf("start time: %w", err)
	}
	return state, ppid, start, nil
}

func splitCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

// listProcs reads every process under root (normally /proc). Processes
// that end while being read are skipped.
func listProcs(root string) ([]procInfo, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("lab: list processes: %w", err)
	}
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		info, err := readProc(root, pid)
		if err != nil {
			continue
		}
		out = append(out, info)
	}
	return out, nil
}

// sameProcess reports whether the live process info is the process p the
// lab recorded: same PID and start time. A record without a start time
// (never expected, but lab.json is edited by hand sometimes) falls back to
// the command line.
func sameProcess(p Process, info procInfo) bool {
	if p.PID != info.PID {
		return false
	}
	if p.StartTime != 0 {
		return p.StartTime == info.StartTime
	}
	return len(p.Args) > 0 && strings.Join(p.Args, "\x00") == strings.Join(info.Args, "\x00")
}

// alive reports whether the recorded process still runs (and is not a
// later process with its PID, nor a zombie waiting for its parent).
func alive(p *Process) bool {
	if p == nil || p.PID <= 0 {
		return false
	}
	info, err := readProc("/proc", p.PID)
	return err == nil && sameProcess(*p, info) && info.State != 'Z'
}

// startIn starts cmd inside the named network namespace ("" is the
// caller's): the child inherits the namespace of the thread that forks it.
func startIn(namespace string, cmd *exec.Cmd) error {
	if namespace == "" {
		return cmd.Start()
	}
	return hostns.Do(namespace, cmd.Start)
}

// spawn starts a long-lived lab process: in its own session (so that a
// terminal's Ctrl-C on `lab up` does not reach it), output appended to
// logPath, and returns its record. The caller must not Wait for it; a
// goroutine reaps it so that it does not linger as a zombie while this
// process lives.
func spawn(role, name, namespace, logPath string, args []string) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: log of %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := startIn(namespace, cmd); err != nil {
		return nil, fmt.Errorf("lab: start %s: %w", name, err)
	}
	go func() { _ = cmd.Wait() }()
	p := &Process{Role: role, Name: name, PID: cmd.Process.Pid, Args: args, Namespace: namespace, Log: logPath}
	info, err := readProc("/proc", p.PID)
	if err != nil {
		return p, fmt.Errorf("lab: %s exited at once; see %s", name, logPath)
	}
	p.StartTime = info.StartTime
	return p, nil
}

// runIn runs a short command inside a namespace and returns its combined
// output. The context bounds it.
func runIn(ctx context.Context, namespace string, args []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// Its own process group, so that a timeout kills what it started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	if err := startIn(namespace, cmd); err != nil {
		return nil, err
	}
	err := cmd.Wait()
	return out.Bytes(), err
}

// terminate ends the process pid if it still is the one that was recorded
// (same start time): SIGTERM, then SIGKILL after grace. It returns whether
// the process was found.
func terminate(pid int, start uint64, grace time.Duration) (bool, error) {
	info, err := readProc("/proc", pid)
	if err != nil || info.StartTime != start {
		return false, nil
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return false, nil
		}
		return true, fmt.Errorf("lab: signal %d: %w", pid, err)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if gone(pid, start) {
			return true, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Still the same process: the start time was checked a moment ago and
	// a PID is not reused while its process (or zombie) exists.
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return true, fmt.Errorf("lab: kill %d: %w", pid, err)
	}
	for i := 0; i < 100 && !gone(pid, start); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	return true, nil
}

// gone reports whether the process has ended (a zombie counts as ended:
// its parent, not us, has to reap it).
func gone(pid int, start uint64) bool {
	info, err := readProc("/proc", pid)
	return err != nil || info.StartTime != start || info.State == 'Z'
}
