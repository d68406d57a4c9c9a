package guest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/corridor-dev/corridor/internal/mountinfo"
	"github.com/corridor-dev/corridor/internal/spec"
)

// cgroupVersion says which hierarchy holds the cpu and memory controllers.
type cgroupVersion int

const (
	cgroupV1 cgroupVersion = 1
	cgroupV2 cgroupVersion = 2
)

// cpuPeriodUS is the CFS period every task cgroup gets: 100 ms, the
// kernel's default, so a quota reads as "millicpu * 100" microseconds.
const cpuPeriodUS = 100000

// minCPUQuotaUS is the smallest quota the kernel accepts (1 ms).
const minCPUQuotaUS = 1000

// cgroupLayout is where the cpu, memory and pids controllers are mounted.
// On a pure v2 host one directory serves both; on a v1 or hybrid host
// (such as our lab machines, whose v2 mount holds only hugetlb) each
// controller has its own hierarchy.
type cgroupLayout struct {
	Version cgroupVersion
	V2Root  string // v2: the cgroup2 mount with cpu and memory
	CPURoot string // v1: the hierarchy with the cpu controller
	MemRoot string // v1: the hierarchy with the memory controller
	// PidsRoot (v1) is the hierarchy with the pids controller, "" when
	// there is none; V2Pids tells whether the v2 mount offers pids. A
	// host without the pids controller runs tasks without a pids limit.
	PidsRoot string
	V2Pids   bool
}

// detectCgroups reads /proc/self/mountinfo. containerd/cgroups' Mode()
// only says "hybrid" on hosts like ours, which does not tell where cpu
// and memory live, so each controller is looked up here.
func detectCgroups() (cgroupLayout, error) {
	l, err := readCgroupMounts()
	if err == nil {
		return l, nil
	}
	// None visible: started by `ip netns exec`, which hides them (see
	// remountCgroups); mount them again and look once more.
	if rerr := remountCgroups(); rerr != nil {
		return cgroupLayout{}, fmt.Errorf("%w (%w)", err, rerr)
	}
	return readCgroupMounts()
}

func readCgroupMounts() (cgroupLayout, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return cgroupLayout{}, fmt.Errorf("guest: read mounts: %w", err)
	}
	defer f.Close()
	return parseCgroupMounts(f, func(dir string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
		return string(b), err
	})
}

// parseCgroupMounts picks the cgroup layout from mountinfo text.
// controllers returns the content of cgroup.controllers of a cgroup2 mount.
// A v2 mount offering both cpu and memory wins; otherwise both controllers
// must be on v1 hierarchies.
func parseCgroupMounts(r io.Reader, controllers func(dir string) (string, error)) (cgroupLayout, error) {
	mounts, err := mountinfo.Parse(r)
	if err != nil {
		return cgroupLayout{}, fmt.Errorf("guest: read mounts: %w", err)
	}
	var l cgroupLayout
	var v2 []string
	for _, m := range mounts {
		switch m.FSType {
		case "cgroup2":
			v2 = append(v2, m.Point)
		case "cgroup":
			if slices.Contains(m.Super, "cpu") && l.CPURoot == "" {
				l.CPURoot = m.Point
			}
			if slices.Contains(m.Super, "memory") && l.MemRoot == "" {
				l.MemRoot = m.Point
			}
			if slices.Contains(m.Super, "pids") && l.PidsRoot == "" {
				l.PidsRoot = m.Point
			}
		}
	}
	for _, mnt := range v2 {
		c, err := controllers(mnt)
		if err != nil {
			continue
		}
		f := strings.Fields(c)
		if slices.Contains(f, "cpu") && slices.Contains(f, "memory") {
			return cgroupLayout{Version: cgroupV2, V2Root: mnt, V2Pids: slices.Contains(f, "pids")}, nil
		}
	}
	if l.CPURoot != "" && l.MemRoot != "" {
		l.Version = cgroupV1
		return l, nil
	}
	return cgroupLayout{}, errors.New("guest: no cgroup hierarchy offers the cpu and memory controllers (need cgroup v2 with both, or v1 cpu and memory mounts)")
}

// cgroupFile is one control file value to write, relative to the task's
// cgroup directory in the hierarchy of controller ctrl ("" on v2).
type cgroupFile struct {
	Ctrl  string
	File  string
	Value string
}

// cpuQuotaUS turns millicpu into a CFS quota for cpuPeriodUS; 0 means no
// limit (-1).
func cpuQuotaUS(m spec.MilliCPU) int64 {
	if m <= 0 {
		return -1
	}
	q := int64(m) * cpuPeriodUS / 1000
	return max(q, minCPUQuotaUS)
}

// CPU weights. Each task's cgroup weighs its CPU request against its
// siblings' (one CPU = the kernel's default weight: cpu.shares 1024 on v1,
// cpu.weight 100 on v2; a task with no request counts as one CPU), and
// every cgroup of ours between the hierarchy's root and the tasks weighs
// as many CPUs as the host has (parentShares), as Kubernetes does for its
// pods' parent: at the default weight, all guests of a host together got
// the share of one busy host thread, and on a loaded host (a WireGuard
// process alone runs a dozen threads) that, more than the path, decided
// what a guest could send (bench/RESULTS.md, "Data path, round 2").
func cpuShares(m spec.MilliCPU) int64 {
	if m <= 0 {
		return 1024
	}
	return max(int64(m)*1024/1000, 2) // the kernel's minimum
}

func cpuWeight(m spec.MilliCPU) int64 {
	if m <= 0 {
		return 100
	}
	return min(max(int64(m)*100/1000, 1), 10000) // the kernel's range
}

// parentShares and parentWeight weigh the host's CPU count.
func parentShares() int64 { return cpuShares(spec.MilliCPU(runtime.NumCPU() * 1000)) }
func parentWeight() int64 { return cpuWeight(spec.MilliCPU(runtime.NumCPU() * 1000)) }

// weighParents gives every cgroup of ours above the task (below the
// hierarchy's root) the host's CPU count as its weight.
func (c taskCgroup) weighParents() error {
	root, file, val := c.layout.CPURoot, "cpu.shares", parentShares()
	if c.layout.Version == cgroupV2 {
		root, file, val = c.layout.V2Root, "cpu.weight", parentWeight()
	}
	for rel := filepath.Dir(c.rel); rel != "." && rel != "/" && rel != ""; rel = filepath.Dir(rel) {
		p := filepath.Join(root, rel, file)
		if err := os.WriteFile(p, []byte(strconv.FormatInt(val, 10)), 0o644); err != nil {
			return fmt.Errorf("guest: set %s to %d: %w", p, val, err)
		}
	}
	return nil
}

// pidsMax is the pids limit of r: spec.DefaultPids when unset.
func pidsMax(r spec.Resources) string {
	if r.Pids <= 0 {
		return strconv.Itoa(spec.DefaultPids)
	}
	return strconv.Itoa(r.Pids)
}

// v1Limits are the control files of a v1 task cgroup, in writing order
// (the period before the quota measured against it); pids says whether
// the host has the pids controller.
func v1Limits(r spec.Resources, pids bool) []cgroupFile {
	mem := "-1"
	if r.Memory > 0 {
		mem = strconv.FormatInt(int64(r.Memory), 10)
	}
	fs := []cgroupFile{
		{"cpu", "cpu.cfs_period_us", strconv.Itoa(cpuPeriodUS)},
		cpuQuotaFile(false, cpuQuotaUS(r.CPU)),
		{"cpu", "cpu.shares", strconv.FormatInt(cpuShares(r.CPU), 10)},
		{"memory", "memory.limit_in_bytes", mem},
	}
	if pids {
		fs = append(fs, cgroupFile{"pids", "pids.max", pidsMax(r)})
	}
	return fs
}

// v2Limits are the control files of a v2 task cgroup; pids says whether
// the pids controller is available.
func v2Limits(r spec.Resources, pids bool) []cgroupFile {
	mem := "max"
	if r.Memory > 0 {
		mem = strconv.FormatInt(int64(r.Memory), 10)
	}
	fs := []cgroupFile{
		cpuQuotaFile(true, cpuQuotaUS(r.CPU)),
		{"", "cpu.weight", strconv.FormatInt(cpuWeight(r.CPU), 10)},
		{"", "memory.max", mem},
	}
	if pids {
		fs = append(fs, cgroupFile{"", "pids.max", pidsMax(r)})
	}
	return fs
}

// taskCgroup is one task's cgroup: rel is "<parent>/<name>" below each
// hierarchy root.
type taskCgroup struct {
	layout cgroupLayout
	rel    string
}

// dir is the task's directory in the hierarchy of ctrl.
func (c taskCgroup) dir(ctrl string) string {
	switch {
	case c.layout.Version == cgroupV2:
		return filepath.Join(c.layout.V2Root, c.rel)
	case ctrl == "memory":
		return filepath.Join(c.layout.MemRoot, c.rel)
	case ctrl == "pids" && c.layout.PidsRoot != "":
		return filepath.Join(c.layout.PidsRoot, c.rel)
	default:
		return filepath.Join(c.layout.CPURoot, c.rel)
	}
}

func (c taskCgroup) dirs() []string {
	if c.layout.Version == cgroupV2 {
		return []string{c.dir("")}
	}
	ds := []string{c.dir("cpu"), c.dir("memory")}
	if c.layout.PidsRoot != "" {
		ds = append(ds, c.dir("pids"))
	}
	return ds
}

// Ensure creates the cgroup if needed and writes its limits.
func (c taskCgroup) Ensure(r spec.Resources) error {
	if c.layout.Version == cgroupV2 {
		if err := c.enableV2Controllers(); err != nil {
			return err
		}
	}
	for _, d := range c.dirs() {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("guest: create cgroup: %w", err)
		}
	}
	if err := c.weighParents(); err != nil {
		return err
	}
	limits := v1Limits(r, c.layout.PidsRoot != "")
	if c.layout.Version == cgroupV2 {
		limits = v2Limits(r, c.layout.V2Pids)
	}
	for _, l := range limits {
		p := filepath.Join(c.dir(l.Ctrl), l.File)
		if err := os.WriteFile(p, []byte(l.Value), 0o644); err != nil {
			return fmt.Errorf("guest: set %s to %s: %w", p, l.Value, err)
		}
	}
	return nil
}

// cpuQuotaFile is the control file of a CPU quota of q microseconds per
// cpuPeriodUS (q < 0: none) on cgroup v2 or v1.
func cpuQuotaFile(v2 bool, q int64) cgroupFile {
	if v2 {
		v := "max " + strconv.Itoa(cpuPeriodUS)
		if q >= 0 {
			v = fmt.Sprintf("%d %d", q, cpuPeriodUS)
		}
		return cgroupFile{"", "cpu.max", v}
	}
	return cgroupFile{"cpu", "cpu.cfs_quota_us", strconv.FormatInt(q, 10)}
}

// SetCPUQuota writes the CFS quota of r's CPU, or none (unlimited).
func (c taskCgroup) SetCPUQuota(r spec.Resources, unlimited bool) error {
	q := cpuQuotaUS(r.CPU)
	if unlimited {
		q = -1
	}
	l := cpuQuotaFile(c.layout.Version == cgroupV2, q)
	p := filepath.Join(c.dir(l.Ctrl), l.File)
	if err := os.WriteFile(p, []byte(l.Value), 0o644); err != nil {
		return fmt.Errorf("guest: set %s to %s: %w", p, l.Value, err)
	}
	return nil
}

// enableV2Controllers turns cpu and memory (and pids, when there) on in
// every ancestor of the task cgroup, as v2 requires before a child can be
// limited.
func (c taskCgroup) enableV2Controllers() error {
	ctrls := "+cpu +memory"
	if c.layout.V2Pids {
		ctrls += " +pids"
	}
	dir := c.layout.V2Root
	for _, part := range strings.Split(filepath.Dir(c.rel), "/") {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(ctrls), 0o644); err != nil {
			return fmt.Errorf("guest: enable controllers %q in %s: %w", ctrls, dir, err)
		}
		if part == "" || part == "." {
			break
		}
		dir = filepath.Join(dir, part)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("guest: create cgroup: %w", err)
		}
	}
	if dir == c.layout.V2Root {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(ctrls), 0o644); err != nil {
		return fmt.Errorf("guest: enable controllers %q in %s: %w", ctrls, dir, err)
	}
	return nil
}

// OpenDir opens the v2 cgroup directory for SysProcAttr.CgroupFD.
func (c taskCgroup) OpenDir() (*os.File, error) {
	f, err := os.OpenFile(c.dir(""), os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("guest: open cgroup: %w", err)
	}
	return f, nil
}

// AddProc moves pid into the cgroup (v1: in every hierarchy).
func (c taskCgroup) AddProc(pid int) error {
	for _, d := range c.dirs() {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("guest: move pid %d into cgroup %s: %w", pid, d, err)
		}
	}
	return nil
}

// Procs lists the processes in the cgroup (union over hierarchies).
func (c taskCgroup) Procs() []int {
	var pids []int
	for _, d := range c.dirs() {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range bytes.Fields(b) {
			if pid, err := strconv.Atoi(string(f)); err == nil && !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// Kill sends sig to every process in the cgroup and, with wait > 0, waits
// that long for it to empty. It reports whether the cgroup is empty.
func (c taskCgroup) Kill(sig syscall.Signal, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		pids := c.Procs()
		if len(pids) == 0 {
			return true
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, sig)
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Remove deletes the cgroup directories. The processes must be gone; a
// just-killed process may take a moment to leave, hence the retries.
func (c taskCgroup) Remove() error {
	var errs []error
	for _, d := range c.dirs() {
		var err error
		for range 50 {
			err = os.Remove(d)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("guest: remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// Cgroups is where this host's cpu and memory controllers live.
type Cgroups struct{ layout cgroupLayout }

// DetectCgroups finds the cpu and memory hierarchies (v2, or v1 ones).
func DetectCgroups() (Cgroups, error) {
	l, err := detectCgroups()
	return Cgroups{layout: l}, err
}

// Unified tells whether the controllers are on cgroup v2, where a child
// is started directly in its cgroup (SysProcAttr.UseCgroupFD with
// Cgroup.OpenDir); on v1 it is moved there after start (AddProc).
func (cs Cgroups) Unified() bool { return cs.layout.Version == cgroupV2 }

// Task is the cgroup of task under parent with its unscoped name
// (CgroupRel(parent, Name(task))); Ensure creates it.
func (cs Cgroups) Task(parent, task string) *Cgroup {
	return cs.Named(parent, Name(task))
}

// Named is the cgroup of the guest named name (Record.GuestName,
// ScopedName) under parent; Ensure creates it.
func (cs Cgroups) Named(parent, name string) *Cgroup {
	return &Cgroup{c: taskCgroup{layout: cs.layout, rel: CgroupRel(parent, name)}}
}

// Cgroup is one task's cgroup, in every hierarchy that holds the cpu and
// memory controllers. Both runtimes use it: the netns runtime for the
// program, the VM runtime for QEMU.
type Cgroup struct{ c taskCgroup }

// OpenCgroup detects the hierarchies and returns the cgroup of the guest
// named name (Record.GuestName, ScopedName) under parent; Ensure creates
// it.
func OpenCgroup(parent, name string) (*Cgroup, error) {
	cs, err := DetectCgroups()
	if err != nil {
		return nil, err
	}
	return cs.Named(parent, name), nil
}

// Ensure creates the cgroup if needed and sets its CPU, memory and pids
// limits (pids: resources.pids, default spec.DefaultPids).
func (g *Cgroup) Ensure(r spec.Resources) error { return g.c.Ensure(r) }

// Unthrottle lifts the cgroup's CPU quota; its weight stays. The netns
// runtime does so while guest-init seals a guest, before any of the
// task's code runs, and while a removed task's program ends: neither is
// the task's work, and at a request of a few millicpu each would take
// seconds (guest-init needs about 70 ms of CPU).
func (g *Cgroup) Unthrottle() error { return g.c.SetCPUQuota(spec.Resources{}, true) }

// Throttle sets the cgroup's CPU quota back to r's.
func (g *Cgroup) Throttle(r spec.Resources) error { return g.c.SetCPUQuota(r, false) }

// AddProc moves a process into the cgroup (v1: in every hierarchy).
func (g *Cgroup) AddProc(pid int) error { return g.c.AddProc(pid) }

// OpenDir opens the v2 cgroup directory for SysProcAttr.CgroupFD.
func (g *Cgroup) OpenDir() (*os.File, error) { return g.c.OpenDir() }

// Kill sends sig to every process in the cgroup and, with wait > 0,
// waits that long for it to empty. It reports whether the cgroup is empty.
func (g *Cgroup) Kill(sig syscall.Signal, wait time.Duration) bool { return g.c.Kill(sig, wait) }

// Procs lists the processes in the cgroup (union over hierarchies).
func (g *Cgroup) Procs() []int { return g.c.Procs() }

// Dir is the cgroup's directory in the hierarchy of controller ctrl
// ("cpu", "memory", "pids"; any on v2).
func (g *Cgroup) Dir(ctrl string) string { return g.c.dir(ctrl) }

// Dirs are the cgroup's directories, one per hierarchy.
func (g *Cgroup) Dirs() []string { return g.c.dirs() }

// Remove deletes the cgroup; its processes must be gone.
func (g *Cgroup) Remove() error { return g.c.Remove() }
