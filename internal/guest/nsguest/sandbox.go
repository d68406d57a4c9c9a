package nsguest

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/vishvananda/netns"
)

// A netns guest is sealed: its program is started through guest-init (a
// hidden re-exec of the agent's own binary, InitArg) in new mount, PID,
// UTS, IPC and cgroup namespaces besides its network namespace, and sees
// a root built for it alone (docs/guests.md, "What a netns guest can and
// cannot do"):
//
//	/usr /bin /sbin /lib*  the host's, read-only (symlinks kept as such)
//	/etc                   a few host files (resolver, TLS roots, ld.so,
//	                       alternatives), plus passwd, group, hosts and
//	                       hostname written for the task; read-only
//	/data                  the task's data directory (CORRIDOR_DATA_DIR), read-write
//	/tmp /run /dev/shm     private tmpfs
//	/dev                   null zero full random urandom tty, pts, fd links
//	/proc                  of its own PID namespace (/proc/sys read-only)
//	the program file       read-only at its own path, when it lies
//	                       outside the directories above (the agent's
//	                       binary for a command "corridor")
//
// and runs as an unprivileged uid/gid with no capabilities, no_new_privs
// and a seccomp filter (seccomp.go).
const (
	// InitArg is the first argument that makes the agent's binary act as
	// guest-init (`corridor guest-init`; a test binary calls InitMain from
	// its TestMain on it).
	InitArg = "guest-init"
	// GuestDataDir is where the task's data directory appears inside the
	// guest: its CORRIDOR_DATA_DIR.
	GuestDataDir = "/data"
	// rootDirName is the empty directory in the task's state directory on
	// which guest-init mounts the guest's root (in its own mount
	// namespace: the host sees an empty directory).
	rootDirName = "root"
	// sandboxFD is the descriptor on which guest-init reads its sandbox.
	sandboxFD = 3
	// limitsFD is guest-init's end of a socket pair on which it tells the
	// agent that the guest is sealed ("sealed" byte) and waits for the
	// agent to have set the task's CPU quota ("limited" byte) before it
	// starts the program: guest-init seals unthrottled, the program never
	// runs so. The agent names it in limitsEnv; a guest-init started by
	// an agent of before the handshake (an upgrade under way) finds no
	// limitsEnv and starts the program at once, throttled from birth as
	// that agent left it.
	limitsFD  = 4
	limitsEnv = "CORRIDOR_LIMITS_FD"
	// The handshake's two bytes.
	sealedByte  = 's'
	limitedByte = 'l'
	// sealVersion names the sealing in the program hash: a change of it
	// restarts programs sealed the older way (or not at all).
	sealVersion = "sealed-1"
)

// The range of the uids and gids given to tasks that do not name a user
// (guest.user): TaskIDBase + [0, TaskIDCount), 1879048192 to 1895825407.
// It lies above the container ranges that systemd hands out (524288 to
// 1879048191) and far above regular and system users, so that a task's
// id is never a host user's.
const (
	TaskIDBase  = 0x70000000
	TaskIDCount = 1 << 24
)

// TaskID is the uid (and gid) of a task that names no user: derived from
// the task ID alone (SHA-256, first 4 bytes, modulo TaskIDCount), so it is
// the same on every host and across restarts, and differs between tasks
// (two tasks of one host share an id with odds of n²/2^25 for n tasks;
// they would still see nothing of each other, see docs/guests.md).
func TaskID(task string) uint32 {
	sum := sha256.Sum256([]byte(task))
	return TaskIDBase + binary.BigEndian.Uint32(sum[:4])%TaskIDCount
}

// taskUser is the uid and gid the task's program runs as: guest.user when
// set (validated by spec), else TaskID.
func taskUser(g compile.Guest) (uid, gid uint32, err error) {
	if g.Spec.User != "" {
		return spec.ParseUser(g.Spec.User)
	}
	id := TaskID(g.Task)
	return id, id, nil
}

// sandbox is what guest-init needs to seal a program, sent by the agent on
// sandboxFD as JSON.
type sandbox struct {
	Root     string   `json:"root"`     // host path of the empty mount point of the guest's root
	Hostname string   `json:"hostname"` // the UTS namespace's
	Address  string   `json:"address"`  // the task's overlay address, for /etc/hosts
	UID      uint32   `json:"uid"`
	GID      uint32   `json:"gid"`
	Data     string   `json:"data"` // host path of the task's data directory, bound at GuestDataDir
	Exe      string   `json:"exe"`  // the program (host path); bound read-only at that path if not visible otherwise
	Argv     []string `json:"argv"`
	Env      []string `json:"env"`
	NetRaw   bool     `json:"netRaw"` // keep CAP_NET_RAW, allow raw and packet sockets
	// Resolvers are the task's DNS servers (hoststate.Guest.Resolvers):
	// the guest's /etc/resolv.conf names them instead of the host's.
	Resolvers []string `json:"resolvers,omitempty"`
}

// guestSysctls are set in every guest's network namespace: ports below
// 1024 may be bound without a capability (the namespace holds only the
// task's own address, so a low port there claims nothing of the host's),
// and ICMP echo sockets are open to every group (ping without CAP_NET_RAW).
var guestSysctls = []hostns.Setting{
	{Key: "net.ipv4.ip_unprivileged_port_start", Value: "0"},
	{Key: "net.ipv4.ping_group_range", Value: "0\t2147483647"},
}

func setGuestSysctls(ns netns.NsHandle) error {
	_, err := hostns.Sysctls(ns, guestSysctls)
	return err
}

// prepareData creates the task's data directory and gives it to uid:gid.
// A directory owned by someone else (made before guests were sealed, or
// for another guest.user) is handed over with everything in it.
func prepareData(dir string, uid, gid uint32) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("guest: data directory: %w", err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(dir, &st); err != nil {
		return fmt.Errorf("guest: data directory: %w", err)
	}
	if st.Uid == uid && st.Gid == gid {
		return nil
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(uid), int(gid))
	})
	if err != nil {
		return fmt.Errorf("guest: give data directory to %d:%d: %w", uid, gid, err)
	}
	return nil
}

// visibleDirs are the host directories a guest sees at the same path
// (read-only): a program under one of them needs no bind of its own.
var visibleDirs = []string{"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// visibleInGuest tells whether the host file p (absolute) is seen by the
// guest at the same path without a bind of its own.
func visibleInGuest(p string) bool {
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(strings.TrimPrefix(real, "/"), "/")
	for _, d := range visibleDirs {
		if first == d {
			return true
		}
	}
	return false
}

// errSealed marks failures of guest-init's sealing steps.
var errSealed = errors.New("guest-init")
