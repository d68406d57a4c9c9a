package sample

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// PGOptions configures RunPostgres.
type PGOptions struct {
	// Data is the directory that keeps the cluster (in Data/pgdata), kept
	// across restarts: under Corridor, the task's CORRIDOR_DATA_DIR.
	Data string
	// ListenAddr is PostgreSQL's listen_addresses ("*" in a guest, whose
	// namespace holds only its own address) and Port its port.
	ListenAddr string
	Port       int
	// Task becomes cluster_name, which the app reports as the db that
	// served it.
	Task string
	// Password of role PGUser; empty means trust (the Corridor firewall
	// alone decides who reaches the port).
	Password string
	// Bin is the directory of postgres and initdb; empty: $PATH, then the
	// newest /usr/lib/postgresql/*/bin.
	Bin string
	// User runs PostgreSQL when started as root (PostgreSQL refuses to run
	// as root); default "postgres".
	User string
	// StopTimeout bounds a fast shutdown before PostgreSQL is killed.
	StopTimeout time.Duration
	Log         *slog.Logger
	// Output receives PostgreSQL's own log; default os.Stderr.
	Output io.Writer
}

// FindPostgres returns the directory that holds the postgres and initdb
// programs: dir when given, else the one of postgres in $PATH, else the
// newest /usr/lib/postgresql/<version>/bin (Debian's layout).
func FindPostgres(dir string) (string, error) {
	has := func(d string) bool {
		for _, p := range []string{"postgres", "initdb"} {
			if fi, err := os.Stat(filepath.Join(d, p)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if dir != "" {
		if !has(dir) {
			return "", fmt.Errorf("%s holds no postgres and initdb programs", dir)
		}
		return dir, nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil && has(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if has(d) {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL not found: install it (Debian: apt-get install postgresql) or pass --bin DIR")
}

// RunPostgres runs a real PostgreSQL server as the db tier until ctx ends,
// then shuts it down fast (SIGINT: clients are disconnected, work is
// flushed) and returns. The first run makes the cluster with initdb: role
// PGUser (password o.Password, or trust), and a pg_hba.conf that lets that
// role in from any address, since in a guest the Corridor firewall, not
// PostgreSQL, decides who reaches the port.
//
// PostgreSQL refuses to run as root and must be able to reach its data
// directory, which under Corridor sits in the agent's private state
// directory. So when run as root it runs PostgreSQL as o.User and, on a
// thread with a mount namespace of its own, bind-mounts the data
// directory on a fresh directory under /tmp that o.User can reach. The
// mount exists for PostgreSQL only and goes away with it; nothing in the
// agent's directories is opened up.
func RunPostgres(ctx context.Context, o PGOptions) error {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Output == nil {
		o.Output = os.Stderr
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 10 * time.Second
	}
	if o.Task == "" {
		o.Task = "postgres"
	}
	if len(o.Task) > 63 || strings.ContainsFunc(o.Task, func(r rune) bool { return r < 0x20 || r > 0x7e || r == '\'' }) {
		return fmt.Errorf("task name %q cannot be a PostgreSQL cluster_name (printable ASCII without quotes, at most 63 bytes)", o.Task)
	}
	bin, err := FindPostgres(o.Bin)
	if err != nil {
		return err
	}
	pgdata := filepath.Join(o.Data, "pgdata")
	if err := os.MkdirAll(pgdata, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}

	var cred *syscall.Credential
	dataPath := pgdata
	if os.Geteuid() == 0 {
		name := o.User
		if name == "" {
			name = "postgres"
		}
		u, err := user.Lookup(name)
		if err != nil {
			return fmt.Errorf("PostgreSQL cannot run as root, and user %q to run it as: %w", name, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(pgdata, uid, gid); err != nil {
			return fmt.Errorf("data directory: %w", err)
		}
		// The thread stays locked, and so in its own mount namespace,
		// until this goroutine ends: it starts initdb and postgres.
		runtime.LockOSThread()
		mnt, err := privateDataMount(pgdata)
		if err != nil {
			return err
		}
		defer func() {
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
			_ = os.Remove(mnt)
		}()
		dataPath = mnt
	}

	if _, err := os.Stat(filepath.Join(pgdata, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := initCluster(ctx, o, bin, dataPath, cred); err != nil {
			return err
		}
	}

	args := []string{"-D", dataPath, "-p", strconv.Itoa(o.Port),
		"-c", "listen_addresses=" + o.ListenAddr,
		"-c", "cluster_name=" + o.Task,
		"-c", "unix_socket_directories=" + dataPath,
		// Small: a sample tier in a guest with a memory limit.
		"-c", "shared_buffers=16MB", "-c", "max_connections=30",
		"-c", "logging_collector=off",
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = o.Output, o.Output
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGINT}
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	o.Log.Info("postgres started", "pid", cmd.Process.Pid, "port", o.Port, "listen", o.ListenAddr, "data", pgdata, "bin", bin, "cluster", o.Task)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return fmt.Errorf("postgres exited: %w", err)
	case <-ctx.Done():
	}
	// Fast shutdown; the agent's own SIGKILL after its grace period is the
	// last resort, and SIGQUIT (immediate, crash recovery at next start)
	// the one before it.
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		o.Log.Info("postgres stopped", "err", err)
		return nil
	case <-time.After(o.StopTimeout):
	}
	o.Log.Warn("postgres did not stop in time; immediate shutdown", "after", o.StopTimeout)
	_ = cmd.Process.Signal(syscall.SIGQUIT)
	<-done
	return nil
}

// pgMountPrefix names the directories under /tmp on which data directories
// are mounted for PostgreSQL.
const pgMountPrefix = "corridor-pg-"

// privateDataMount moves the calling (locked) thread into a mount
// namespace of its own and bind-mounts dir on a new directory under /tmp,
// which it returns.
func privateDataMount(dir string) (string, error) {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return "", fmt.Errorf("private mount namespace for PostgreSQL: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return "", fmt.Errorf("private mount namespace for PostgreSQL: %w", err)
	}
	// /tmp, not $TMPDIR: every parent of the mount point must be
	// reachable by the user PostgreSQL runs as.
	mnt, err := os.MkdirTemp("/tmp", pgMountPrefix)
	if err != nil {
		return "", err
	}
	if err := unix.Mount(dir, mnt, "", unix.MS_BIND, ""); err != nil {
		os.Remove(mnt)
		return "", fmt.Errorf("bind-mount %s for PostgreSQL: %w", dir, err)
	}
	return mnt, nil
}

// initCluster runs initdb and opens pg_hba.conf to PGUser from anywhere.
func initCluster(ctx context.Context, o PGOptions, bin, dataPath string, cred *syscall.Credential) error {
	authHost := "trust"
	args := []string{"-D", dataPath, "-U", PGUser, "-E", "UTF8", "--no-instructions", "--auth-local=trust"}
	var stdin *os.File
	if o.Password != "" {
		authHost = "scram-sha-256"
		// The password goes through a pipe: never a file, never argv.
		// initdb opens /dev/stdin again, which needs the pipe to belong
		// to the user it runs as.
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		defer r.Close()
		if cred != nil {
			if err := unix.Fchown(int(r.Fd()), int(cred.Uid), int(cred.Gid)); err != nil {
				w.Close()
				return fmt.Errorf("password pipe for initdb: %w", err)
			}
		}
		go func() {
			_, _ = io.WriteString(w, o.Password+"\n")
			w.Close()
		}()
		args = append(args, "--pwfile=/dev/stdin")
		stdin = r
	}
	args = append(args, "--auth-host="+authHost)
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	cmd.Stdout, cmd.Stderr = o.Output, o.Output
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Dir = "/"
	o.Log.Info("making the PostgreSQL cluster", "data", o.Data, "auth", authHost)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	hba := filepath.Join(dataPath, "pg_hba.conf")
	f, err := os.OpenFile(hba, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pg_hba.conf: %w", err)
	}
	line := fmt.Sprintf("\n# corridor sample: the Corridor firewall decides who reaches this port.\nhost all %s 0.0.0.0/0 %s\nhost all %s ::/0 %s\n", PGUser, authHost, PGUser, authHost)
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return fmt.Errorf("pg_hba.conf: %w", err)
	}
	return f.Close()
}
