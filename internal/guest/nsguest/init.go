package nsguest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// InitMain is guest-init: the agent starts its own binary with InitArg in
// the guest's new namespaces, and this seals the program and runs it. It
// reads the sandbox on fd 3 (sent once the agent has put this process in
// the task's cgroup), then, still as root: enters a cgroup namespace of
// its own, sets the hostname, builds the guest's root and pivots into it,
// drops to the task's uid and gid with no supplementary groups and no
// capabilities (bounding set included), sets no_new_privs and installs the
// seccomp filters. Then, once the agent has set the task's CPU quota
// (awaitLimits), it starts the program and stays as the PID
// namespace's init, unprivileged like it: it forwards SIGTERM and the
// other stop signals to the program, reaps orphans, and exits with the
// program's status (128+signal if it was killed) — the namespace, and
// every process left in it, ends with it. It returns the exit code.
func InitMain() int {
	// Namespaces unshared and the bounding set dropped apply to this
	// thread; the program is forked from it. It stays locked.
	runtime.LockOSThread()
	f := os.NewFile(sandboxFD, "sandbox")
	var sb sandbox
	err := json.NewDecoder(f).Decode(&sb)
	f.Close()
	if err != nil {
		return initFail(fmt.Errorf("read sandbox: %w", err))
	}
	if err := seal(sb); err != nil {
		return initFail(err)
	}
	if os.Getenv(limitsEnv) != "" {
		if err := awaitLimits(os.NewFile(limitsFD, "limits")); err != nil {
			return initFail(err)
		}
	}
	return runInit(sb)
}

// awaitLimits tells the agent on f that the guest is sealed, waits until
// the agent says the task's CPU quota is set, and closes f (the program
// must not inherit it). Anything else (the agent gone, the quota not set)
// is an error: the program does not start.
func awaitLimits(f *os.File) error {
	defer f.Close()
	if _, err := f.Write([]byte{sealedByte}); err != nil {
		return fmt.Errorf("tell the agent the guest is sealed: %w", err)
	}
	var b [1]byte
	if n, err := f.Read(b[:]); n != 1 || b[0] != limitedByte {
		return fmt.Errorf("the agent did not set the task's CPU limit (%q, %v): not starting the program", b[:n], err)
	}
	return nil
}

func initFail(err error) int {
	fmt.Fprintf(os.Stderr, "corridor guest-init: %v\n", err)
	return 125
}

// seal does every step that needs root, and drops it.
func seal(sb sandbox) error {
	if os.Getpid() != 1 {
		return fmt.Errorf("%w: not the init of a new PID namespace (pid %d): run by the agent only", errSealed, os.Getpid())
	}
	// The cgroup namespace is made here, not at clone: on cgroup v1 this
	// process is moved into the task's cgroup after it starts (before the
	// sandbox arrives), and the namespace's root is the cgroup it is in.
	if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
		return fmt.Errorf("%w: cgroup namespace: %w", errSealed, err)
	}
	if err := unix.Sethostname([]byte(sb.Hostname)); err != nil {
		return fmt.Errorf("%w: hostname: %w", errSealed, err)
	}
	lastCap, err := lastCapability()
	if err != nil {
		return err
	}
	if err := buildRoot(sb); err != nil {
		return err
	}
	if err := pivot(sb.Root); err != nil {
		return err
	}
	if err := dropPrivileges(sb, lastCap); err != nil {
		return err
	}
	return installSeccomp(sb.NetRaw)
}

// lastCapability is the highest capability this kernel knows.
func lastCapability() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errSealed, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%w: cap_last_cap: %w", errSealed, err)
	}
	return n, nil
}

// dropPrivileges: bounding set emptied (but CAP_NET_RAW with netRaw), no
// supplementary groups, uid and gid the task's (real, effective, saved;
// on every thread), inheritable and ambient sets empty (but CAP_NET_RAW
// with netRaw, raised as ambient so that the program keeps it).
func dropPrivileges(sb sandbox, lastCap int) error {
	for c := 0; c <= lastCap; c++ {
		if sb.NetRaw && c == unix.CAP_NET_RAW {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("%w: drop capability %d from the bounding set: %w", errSealed, c, err)
		}
	}
	if sb.NetRaw {
		if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("%w: keepcaps: %w", errSealed, err)
		}
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("%w: setgroups: %w", errSealed, err)
	}
	if err := syscall.Setresgid(int(sb.GID), int(sb.GID), int(sb.GID)); err != nil {
		return fmt.Errorf("%w: setresgid %d: %w", errSealed, sb.GID, err)
	}
	if err := syscall.Setresuid(int(sb.UID), int(sb.UID), int(sb.UID)); err != nil {
		return fmt.Errorf("%w: setresuid %d: %w", errSealed, sb.UID, err)
	}
	var keep uint32
	if sb.NetRaw {
		keep = 1 << unix.CAP_NET_RAW
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{{Effective: keep, Permitted: keep, Inheritable: keep}}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("%w: capset: %w", errSealed, err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("%w: clear ambient capabilities: %w", errSealed, err)
	}
	if sb.NetRaw {
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, unix.CAP_NET_RAW, 0, 0); err != nil {
			return fmt.Errorf("%w: ambient CAP_NET_RAW: %w", errSealed, err)
		}
	}
	return nil
}

// stopSignals are forwarded to the program: the agent signals guest-init
// alone, so that the program receives each signal once.
var stopSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// runInit starts the program and acts as its PID namespace's init.
func runInit(sb sandbox) int {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, stopSignals...)
	p, err := os.StartProcess(sb.Exe, sb.Argv, &os.ProcAttr{
		Dir: "/", Env: sb.Env, Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
	})
	if err != nil {
		return initFail(fmt.Errorf("start %s: %w", sb.Exe, err))
	}
	exited := make(chan syscall.WaitStatus, 1)
	go func() {
		// Reap every child, orphans included; report the program's end.
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, 0, nil)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				exited <- 0
				return
			}
			if pid == p.Pid {
				exited <- ws
				return
			}
		}
	}()
	for {
		select {
		case s := <-sigs:
			_ = p.Signal(s)
		case ws := <-exited:
			switch {
			case ws.Signaled():
				fmt.Fprintf(os.Stderr, "corridor guest-init: %s killed by signal %s\n", filepath.Base(sb.Exe), ws.Signal())
				return 128 + int(ws.Signal())
			default:
				return ws.ExitStatus()
			}
		}
	}
}
