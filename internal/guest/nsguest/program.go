package nsguest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/corridor-dev/corridor/internal/spec"
	"golang.org/x/sys/unix"
)

// logCheck is how often running programs' logs are checked for size.
const logCheck = 30 * time.Second

// command is the guest's argv with "corridor" replaced by the agent's
// own binary.
func (r *Runtime) command(g compile.Guest) []string {
	argv := slices.Clone(g.Spec.Command)
	if argv[0] == "corridor" {
		argv[0] = r.cfg.Binary
	}
	return argv
}

// programEnv is the program's environment: g.Env (the compiler's
// contract merged over spec env) plus PATH and HOME unless set, and the
// task's private data directory as the program sees it, sorted.
func programEnv(g compile.Guest, dataDir string) []string {
	env := map[string]string{"PATH": guest.DefaultPath, "HOME": "/", spec.EnvDataDir: dataDir}
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

// programHash names what runs and how it is sealed: a change of it
// restarts the program.
func (r *Runtime) programHash(g compile.Guest) string {
	b, _ := json.Marshal(struct {
		Argv   []string `json:"argv"`
		Env    []string `json:"env"`
		Seal   string   `json:"seal"`
		User   string   `json:"user,omitempty"`
		NetRaw bool     `json:"netRaw,omitempty"`
		// The resolvers are written into /etc when the guest starts: a
		// change restarts the program (omitted when none: a guest
		// without resolvers keeps its hash).
		Resolvers []string `json:"resolvers,omitempty"`
	}{r.command(g), programEnv(g, GuestDataDir), sealVersion, g.Spec.User, g.Spec.NetRaw, resolverList(g)})
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

// startProgram starts t's wanted program, sealed (sandbox.go), in the
// guest's netns and cgroup: the agent's binary is started as guest-init
// (InitArg) in new mount, PID, UTS and IPC namespaces, put in the task's
// cgroup, then handed the sandbox; guest-init seals itself and runs the
// program. The PID recorded, signalled and adopted is guest-init's, as
// the host sees it: the init of the task's PID namespace, whose end ends
// every process of the task.
func (r *Runtime) startProgram(t *task) (*proc, error) {
	g, hash := t.wanted()
	dir := guest.TaskDir(r.cfg.StateDir, g.Task)
	cg := r.cgroup(g.Task)
	// Processes forked by an earlier run that outlived it. Any left
	// (stuck in the kernel) keep the task's quota on through sealing.
	emptied := cg.Kill(syscall.SIGKILL, 2*time.Second)

	uid, gid, err := taskUser(g)
	if err != nil {
		return nil, fmt.Errorf("guest %s: spec.user: %w", g.Task, err)
	}
	argv := r.command(g)
	data := guest.DataDir(r.cfg.StateDir, g.Task)
	if err := prepareData(data, uid, gid); err != nil {
		return nil, err
	}
	root := filepath.Join(dir, rootDirName)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("guest: root mount point: %w", err)
	}
	env := programEnv(g, GuestDataDir)
	pathVar := guest.DefaultPath
	if v, ok := g.Env["PATH"]; ok {
		pathVar = v
	}
	exe, err := lookPath(argv[0], pathVar)
	if err != nil {
		return nil, err
	}
	if !filepath.IsAbs(exe) {
		if exe, err = filepath.Abs(exe); err != nil {
			return nil, err
		}
	}
	sb := sandbox{
		Root: root, Hostname: guest.Name(g.Task), Address: g.Address.String(),
		UID: uid, GID: gid, Data: data, Exe: exe, Argv: argv, Env: env, NetRaw: g.Spec.NetRaw,
		Resolvers: resolverList(g),
	}
	logPath := filepath.Join(dir, guest.LogFile)
	if err := guest.RotateLog(logPath, r.cfg.LogMaxBytes, false); err != nil {
		r.log.Warn("log rotation failed", "task", g.Task, "err", err)
	}
	lf, err := os.OpenFile(logPath, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer lf.Close()
	fmt.Fprintf(lf, "%s corridor: starting %q as %d:%d (sealed)\n", time.Now().UTC().Format(time.RFC3339), argv, uid, gid)

	sbr, sbw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("guest: sandbox pipe: %w", err)
	}
	defer sbr.Close()
	defer sbw.Close()
	limits, initLimits, err := socketPair()
	if err != nil {
		return nil, fmt.Errorf("guest: limits socket pair: %w", err)
	}
	// Ours of guest-init's end closes on return: setLimits then reads
	// guest-init's end, or its absence when it did not start.
	defer initLimits.Close()
	go r.setLimits(g, cg, limits)
	// guest-init seals the guest unthrottled; the quota is back before
	// the program starts (setLimits below, awaitLimits in guest-init).
	if emptied {
		if err := cg.Unthrottle(); err != nil {
			return nil, err
		}
	}
	cmd := &exec.Cmd{
		// One P: guest-init's threads count against the task's pids.
		Path: r.cfg.InitBinary, Args: []string{r.cfg.InitBinary, InitArg}, Dir: "/",
		Env:    []string{"GOMAXPROCS=1", fmt.Sprintf("%s=%d", limitsEnv, limitsFD)},
		Stdout: lf, Stderr: lf, ExtraFiles: []*os.File{sbr, initLimits}, // fd 3: sandboxFD, fd 4: limitsFD
		SysProcAttr: &syscall.SysProcAttr{
			// Own session: the task outlives the agent, and its
			// process group can be signalled as one.
			Setsid:     true,
			Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		},
	}
	if r.cgroups.Unified() {
		// Born in its cgroup: nothing it does escapes the limits.
		cgf, err := cg.OpenDir()
		if err != nil {
			return nil, err
		}
		defer cgf.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cgf.Fd())
	}
	ns, err := hostns.Open(r.netnsName(g.Task))
	if err != nil {
		return nil, fmt.Errorf("open guest netns: %w", err)
	}
	defer ns.Close()
	if err := nsrun.DoHandle(ns, cmd.Start); err != nil {
		return nil, fmt.Errorf("start guest-init for %q: %w", argv[0], err)
	}
	sbr.Close()
	pid := cmd.Process.Pid
	fail := func(err error) (*proc, error) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return nil, err
	}
	if !r.cgroups.Unified() {
		// v1 cannot start a child in a cgroup: it is moved right after
		// start. guest-init waits for its sandbox, sent only after the
		// move, so nothing of the task runs outside the cgroup.
		if err := cg.AddProc(pid); err != nil {
			return fail(err)
		}
	}
	if err := json.NewEncoder(sbw).Encode(sb); err != nil {
		return fail(fmt.Errorf("guest: send the sandbox to guest-init: %w", err))
	}
	sbw.Close()
	// A program that has already exited has no start time; recording 0
	// keeps the next agent from adopting it.
	rec := guest.ProcRecord{ProcID: guest.ProcIDOf(pid), Hash: hash, Started: time.Now()}
	if err := writePidFile(dir, rec); err != nil {
		r.log.Warn("pidfile not written: an agent restart will not find the program", "task", g.Task, "err", err)
	}
	return watchChild(cmd, rec), nil
}

// setLimits answers guest-init's handshake on conn: once the guest is
// sealed, the task's CPU quota goes back on, and only then may guest-init
// start the program. When the quota cannot be set, conn closes unanswered
// and guest-init exits without starting it (the supervisor retries).
// guest-init's end (its exit included) ends the wait.
func (r *Runtime) setLimits(g compile.Guest, cg *guest.Cgroup, conn *os.File) {
	defer conn.Close()
	var b [1]byte
	if n, _ := conn.Read(b[:]); n != 1 || b[0] != sealedByte {
		return // guest-init failed before the program; its log says why
	}
	if err := cg.Throttle(g.Resources); err != nil {
		r.log.Error("guest CPU limit not set: the program is not started", "task", g.Task, "err", err)
		return
	}
	if _, err := conn.Write([]byte{limitedByte}); err != nil {
		r.log.Warn("guest-init gone before it could start the program", "task", g.Task, "err", err)
	}
}

// socketPair returns the two ends of a connected Unix stream socket pair,
// close-on-exec (exec.Cmd's ExtraFiles clears that on the child's copy).
func socketPair() (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "limits"), os.NewFile(uintptr(fds[1]), "limits-init"), nil
}

// rotateLogs keeps the logs of running programs under LogMaxBytes.
func (r *Runtime) rotateLogs() {
	defer r.wg.Done()
	tk := time.NewTicker(logCheck)
	defer tk.Stop()
	for {
		select {
		case <-r.quit:
			return
		case <-tk.C:
		}
		for _, task := range r.tasks.Names() {
			if err := guest.RotateLog(guest.LogPath(r.cfg.StateDir, task), r.cfg.LogMaxBytes, true); err != nil {
				r.log.Warn("log rotation failed", "task", task, "err", err)
			}
		}
	}
}

// proc is a running program the netns runtime watches: its own child or
// one adopted from an earlier agent. It is a guest.Program.
type proc struct {
	guest.ProcRecord
	*guest.Exit
}

func watchChild(cmd *exec.Cmd, rec guest.ProcRecord) *proc {
	return &proc{ProcRecord: rec, Exit: guest.WaitChild(cmd, "")}
}

// adopt watches the program of an earlier agent.
func adopt(rec guest.ProcRecord) (*proc, error) {
	e, err := guest.WatchAdopted(rec.ProcID, "")
	if err != nil {
		return nil, err
	}
	return &proc{ProcRecord: rec, Exit: e}, nil
}

// Record implements guest.Program.
func (p *proc) Record() guest.ProcRecord { return p.ProcRecord }

// End ends the program: SIGTERM to guest-init, which passes it to the
// program (so that it arrives once), then SIGKILL to the process group
// once grace has passed. guest-init runs in its own session, so its PID
// is also its process group ID; its end kills whatever is left in the
// task's PID namespace.
func (p *proc) End(grace time.Duration) {
	p.Stop(grace,
		func() { _ = syscall.Kill(p.PID, syscall.SIGTERM) },
		p.Kill)
}

// Kill implements guest.Program: SIGKILL to the process group.
func (p *proc) Kill() { _ = syscall.Kill(-p.PID, syscall.SIGKILL) }
