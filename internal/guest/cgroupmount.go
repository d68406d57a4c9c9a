package guest

import (
	"bufio"
	"errors"
	"fmt"
	"github.com/corridor-dev/corridor/internal/mountinfo"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// cgroupRoot is where cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// errNoCgroupMounts says the hierarchies exist (the kernel lists them for
// this process) but none is mounted where this process can see it.
var errNoCgroupMounts = errors.New("guest: no cgroup hierarchy is mounted at " + cgroupRoot)

// remountCgroups mounts this process's cgroup hierarchies under
// /sys/fs/cgroup again, when it runs in a mount namespace of its own that
// lost them: `ip netns exec HOST corridor agent` makes a new mount namespace
// and mounts a fresh /sys for the network namespace, which hides
// /sys/fs/cgroup. The hierarchies are the ones /proc/self/cgroup lists;
// mounting an existing hierarchy with the same controllers attaches the
// same tree, so the agent sees the host's cgroups. In the machine's own
// mount namespace it never mounts anything: there a missing hierarchy is
// the host's to fix.
func remountCgroups() error {
	own, err := mountNamespaceIsInit()
	if err != nil {
		return err
	}
	if own {
		return fmt.Errorf("%w, in the mount namespace it was started in: mount cgroup v2 (or v1 cpu and memory) there", errNoCgroupMounts)
	}
	if mountinfo.IsMountPoint(cgroupRoot) {
		return fmt.Errorf("%w: something is mounted there without the cpu and memory controllers", errNoCgroupMounts)
	}
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return fmt.Errorf("guest: read /proc/self/cgroup: %w", err)
	}
	defer f.Close()
	var v1 []string
	v2 := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2 = true
		case parts[1] != "" && !strings.HasPrefix(parts[1], "name="):
			v1 = append(v1, parts[1])
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("guest: read /proc/self/cgroup: %w", err)
	}
	if len(v1) == 0 {
		if !v2 {
			return fmt.Errorf("%w, and this kernel lists none for this process", errNoCgroupMounts)
		}
		if err := unix.Mount("cgroup2", cgroupRoot, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("guest: mount cgroup2 at %s: %w", cgroupRoot, err)
		}
		return nil
	}
	if err := unix.Mount("tmpfs", cgroupRoot, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=755"); err != nil {
		return fmt.Errorf("guest: mount tmpfs at %s: %w", cgroupRoot, err)
	}
	for _, ctrls := range v1 {
		dir := filepath.Join(cgroupRoot, ctrls)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("guest: %w", err)
		}
		if err := unix.Mount("cgroup", dir, "cgroup", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ctrls); err != nil {
			return fmt.Errorf("guest: mount cgroup %s at %s: %w", ctrls, dir, err)
		}
	}
	if v2 {
		dir := filepath.Join(cgroupRoot, "unified")
		if err := os.MkdirAll(dir, 0o755); err == nil {
			_ = unix.Mount("cgroup2", dir, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		}
	}
	return nil
}

// mountNamespaceIsInit tells whether this process shares its parent's
// mount namespace, that is, whether mounting here would change the view
// of the process that started it. `ip netns exec` unshares the mount
// namespace itself and then execs the agent, so there the two differ.
// (PID 1's namespace would be the better reference, but it is not always
// readable, for example inside a container.) When in doubt: shared.
func mountNamespaceIsInit() (bool, error) {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return false, fmt.Errorf("guest: read own mount namespace: %w", err)
	}
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err != nil {
		return true, nil
	}
	return self == parent, nil
}
