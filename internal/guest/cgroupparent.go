package guest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/corridor-dev/corridor/internal/mountinfo"
)

// CgroupParentDirs are the directories of the cgroup parent (such as
// DefaultCgroupParent) that exist in the cgroup hierarchies mounted here,
// v1 and v2 alike, whichever controllers they hold.
func CgroupParentDirs(parent string) ([]string, error) {
	if parent == "" || parent == "." || filepath.IsAbs(parent) {
		return nil, fmt.Errorf("guest: cgroup parent %q is not a relative directory", parent)
	}
	// Started by `ip netns exec`, the hierarchies are hidden until mounted
	// again (detectCgroups does it); without the cpu and memory
	// controllers no task cgroup was made, and the mounts still tell.
	_, _ = detectCgroups()
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil, fmt.Errorf("guest: read mounts: %w", err)
	}
	var dirs []string
	for _, m := range mounts {
		if m.FSType != "cgroup" && m.FSType != "cgroup2" {
			continue
		}
		d := filepath.Join(m.Point, parent)
		if st, err := os.Stat(d); err == nil && st.IsDir() && !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs, nil
}

// RemoveCgroupParent removes the cgroup parent's directory from every
// hierarchy where it is empty. It returns the directories removed, and
// those kept because they still hold cgroups (another agent's tasks on
// this machine) with the cgroups each holds. err reports what could not be
// read or removed for another reason.
func RemoveCgroupParent(parent string) (removed []string, kept map[string][]string, err error) {
	dirs, err := CgroupParentDirs(parent)
	if err != nil {
		return nil, nil, err
	}
	var errs []error
	for _, d := range dirs {
		children := cgroupChildren(d)
		if len(children) > 0 {
			if kept == nil {
				kept = map[string][]string{}
			}
			kept[d] = children
			continue
		}
		switch err := os.Remove(d); {
		case err == nil:
			removed = append(removed, d)
		case !errors.Is(err, os.ErrNotExist): // the same hierarchy twice
			errs = append(errs, fmt.Errorf("guest: remove cgroup %s: %w", d, err))
		}
	}
	return removed, kept, errors.Join(errs...)
}

// cgroupChildren names the cgroups directly under dir.
func cgroupChildren(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}
