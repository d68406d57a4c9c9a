// Package hostns owns the machine's named network namespaces (the files
// under /run/netns that `ip netns` also reads) and the sysctls written
// inside a namespace. The lab, the netns guest runtime and every cleaner
// make, find and remove named namespaces through it, so that there is one
// answer to "where is namespace X" and one way to make /run/netns.
//
// The directory is made a shared mount of itself once, before the first
// namespace is mounted in it, as iproute2 does: namespaces mounted later
// then also appear in mount namespaces made earlier (`ip netns exec` makes
// one per call). Doing it after some namespaces are already mounted in the
// plain directory would hide those under the new mount, and their removal
// would fail with EBUSY; Create and Ensure therefore always share first,
// and Delete repairs a machine where an older Corridor did it the wrong
// way round.
package hostns

import (
	"errors"
	"fmt"
	"github.com/corridor-dev/corridor/internal/mountinfo"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces are bind-mounted.
const Dir = "/run/netns"

// Path is the namespace file of the named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Exists tells whether name is a mounted namespace (not a file left behind
// by a lost mount).
func Exists(name string) bool { return isNsfs(Path(name)) }

func isNsfs(path string) bool {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return false
	}
	return fs.Type == unix.NSFS_MAGIC
}

// Inode identifies the namespace: processes in it show the same inode at
// /proc/<pid>/ns/net.
func Inode(name string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(Path(name), &st); err != nil {
		return 0, fmt.Errorf("hostns: %s: %w", name, err)
	}
	return st.Ino, nil
}

// List names the files under Dir, sorted (a missing Dir lists nothing).
func List() []string {
	ents, err := os.ReadDir(Dir)
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(ents))
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// Do runs fn on a thread inside the named namespace (see nsrun).
func Do(name string, fn func() error) error { return nsrun.Do(Path(name), fn) }

// ErrExists is returned by Create for a namespace that is already there.
var ErrExists = errors.New("hostns: namespace exists")

// Create makes a new named namespace; an existing one is ErrExists.
func Create(name string) error {
	if Exists(name) {
		return fmt.Errorf("%w: %s", ErrExists, name)
	}
	ns, err := create(name)
	if err != nil {
		return err
	}
	return ns.Close()
}

// Ensure opens the named namespace, making it first when it does not
// exist. The handle is the caller's to close.
func Ensure(name string) (netns.NsHandle, error) {
	if Exists(name) {
		return open(name)
	}
	return create(name)
}

// Open opens an existing named namespace; the handle is the caller's.
func Open(name string) (netns.NsHandle, error) { return open(name) }

func open(name string) (netns.NsHandle, error) {
	ns, err := netns.GetFromPath(Path(name))
	if err != nil {
		return ns, fmt.Errorf("hostns: open %s: %w", name, err)
	}
	return ns, nil
}

func create(name string) (netns.NsHandle, error) {
	if err := validName(name); err != nil {
		return netns.None(), err
	}
	if err := share(); err != nil {
		return netns.None(), err
	}
	path := Path(name)
	// A plain file here is what a lost mount leaves behind.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return netns.None(), fmt.Errorf("hostns: remove stale %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return netns.None(), fmt.Errorf("hostns: create %s: %w", path, err)
	}
	f.Close()
	err = nsrun.DoNew(func() error {
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind to %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return netns.None(), fmt.Errorf("hostns: create %s: %w", name, err)
	}
	return open(name)
}

func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') || len(name) > 255 {
		return fmt.Errorf("hostns: invalid namespace name %q", name)
	}
	return nil
}

// shareMu serialises share: two first namespaces made at once must not
// both bind the directory over itself.
var shareMu sync.Mutex

// share makes Dir a shared mount point of its own, once.
func share() error {
	shareMu.Lock()
	defer shareMu.Unlock()
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return fmt.Errorf("hostns: create %s: %w", Dir, err)
	}
	err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("hostns: bind %s: %w", Dir, err)
		}
		err = unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("hostns: share %s: %w", Dir, err)
	}
	return nil
}

// Delete unmounts and removes the named namespace's file; the namespace
// itself goes when no process holds it. A missing one is not an error.
func Delete(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	path := Path(name)
	// Several mounts can be stacked on one file (a namespace added twice
	// by hand): peel them all.
	for i := 0; i < 8 && isNsfs(path); i++ {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("hostns: unmount %s: %w", name, err)
		}
	}
	err := os.Remove(path)
	switch {
	case err == nil, errors.Is(err, os.ErrNotExist):
		return nil
	case errors.Is(err, unix.EBUSY):
		// The file is a mount point under the shared mount of Dir: the
		// namespace was mounted in the plain directory before Dir was
		// made a mount of its own. Only a view without that mount
		// reaches it.
		if err := removeShadowed(name); err != nil {
			return fmt.Errorf("hostns: remove %s (shadowed by the mount on %s): %w", name, Dir, err)
		}
		return nil
	default:
		return fmt.Errorf("hostns: remove %s: %w", name, err)
	}
}

// removeShadowed removes Dir/name from the directory underneath the
// mount on Dir. It works in a private mount namespace of one thread: there
// it unmounts Dir, which reveals the plain directory, unmounts the
// namespace mounted on the file and removes the file. Removing a file that
// is a mount point in another mount namespace detaches that mount there
// (Linux 3.18 and later), so the machine's view loses it too. The thread
// ends with the goroutine, never to run other work in its private view.
func removeShadowed(name string) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with us
		done <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("unshare mount namespace: %w", err)
			}
			// Private, so that nothing below propagates back.
			if err := unix.Mount("", "/", "none", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return fmt.Errorf("make mounts private: %w", err)
			}
			path := Path(name)
			for i := 0; i < 8; i++ {
				if err := unix.Unmount(Dir, unix.MNT_DETACH); err != nil {
					break // Dir is no longer a mount point
				}
				if !mountinfo.IsMountPoint(Dir) {
					break
				}
			}
			for i := 0; i < 8 && isNsfs(path); i++ {
				if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("unmount %s: %w", path, err)
				}
			}
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			return nil
		}()
	}()
	return <-done
}

// Sysctl writes value to key inside ns. key is dotted (net.ipv4.ip_forward)
// or a path relative to /proc/sys. /proc/sys/net belongs to the namespace
// of the thread that opens it, so the write happens on a thread moved into
// ns.
func Sysctl(ns netns.NsHandle, key, value string) error {
	_, err := Sysctls(ns, []Setting{{Key: key, Value: value}})
	return err
}

// Setting is one sysctl and the value it must have.
type Setting struct {
	Key   string // dotted or slashed, relative to /proc/sys
	Value string
}

// SysctlPath is the /proc/sys file of key.
func SysctlPath(key string) string {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	return filepath.Join("/proc/sys", key)
}

// Sysctls writes, inside ns, every setting whose value differs, and
// returns the keys it changed.
func Sysctls(ns netns.NsHandle, want []Setting) ([]string, error) {
	var changed []string
	err := nsrun.DoHandle(ns, func() error {
		for _, s := range want {
			p := SysctlPath(s.Key)
			cur, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("hostns: read sysctl %s: %w", s.Key, err)
			}
			if strings.TrimSpace(string(cur)) == s.Value {
				continue
			}
			if err := os.WriteFile(p, []byte(s.Value), 0o644); err != nil {
				return fmt.Errorf("hostns: sysctl %s=%s: %w", s.Key, s.Value, err)
			}
			changed = append(changed, s.Key)
		}
		return nil
	})
	return changed, err
}
