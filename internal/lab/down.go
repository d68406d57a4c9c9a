package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/corridor-dev/corridor/internal/mountinfo"
)

// DownOptions say which lab Down removes and how.
type DownOptions struct {
	Dir string
	// Prefix names the lab's objects when lab.json is missing or damaged.
	// Empty: a directory without lab.json has nothing to remove, and a
	// damaged lab.json is an error. With a readable lab.json the recorded
	// prefix wins.
	Prefix string
	// KeepLogs keeps DIR/logs; everything else in DIR is removed.
	KeepLogs bool
	// Binary runs `agent --cleanup` when lab.json names no binary (or
	// names one that is gone); empty: the agents' cleanup is skipped and
	// only the namespaces' removal cleans their devices.
	Binary string
	// CleanupTimeout bounds each `corridor agent --cleanup`; Grace is how
	// long a process has between SIGTERM and SIGKILL.
	CleanupTimeout time.Duration
	Grace          time.Duration
	Logger         *slog.Logger
}

// Down removes everything the lab in opts.Dir made: it stops the agents,
// has each remove its guests, devices and rules, ends every process of the
// lab (recorded, or found in a lab namespace or a guest namespace of a lab
// agent), deletes the namespaces, the root link and WireGuard sockets, and
// removes the directory. It works on a lab that crashed half-way through
// Up, and running it again is harmless.
func Down(ctx context.Context, opts DownOptions) error {
	if os.Geteuid() != 0 {
		return errors.New("lab: down needs root (it deletes network namespaces and links): run it with sudo")
	}
	if opts.Dir == "" {
		opts.Dir = DefaultDir()
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return fmt.Errorf("lab: dir %q: %w", opts.Dir, err)
	}
	if opts.CleanupTimeout == 0 {
		opts.CleanupTimeout = 30 * time.Second
	}
	if opts.Grace == 0 {
		opts.Grace = 5 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	l, err := Load(dir)
	switch {
	case err == nil:
	case opts.Prefix == "" && errors.Is(err, ErrNoLab):
		// Nothing recorded here. Objects named after a prefix are removed
		// only when they can be this directory's: the default directory
		// owns the default prefix (a first Down that failed half-way
		// leaves its namespaces and, from older versions, no record);
		// any other directory names what it found and how to remove it,
		// and never answers that nothing is left while something is.
		found := objectsNamed(DefaultPrefix)
		if len(found) == 0 {
			log.Info("no lab in this directory; nothing to remove", "dir", dir)
			return removeDir(dir, opts.KeepLogs)
		}
		if dir != defaultDirAbs() {
			return fmt.Errorf("lab: no lab recorded in %s, but this machine has %s; remove them with: corridor lab down --dir %s --prefix %s",
				dir, strings.Join(found, ", "), dir, DefaultPrefix)
		}
		log.Warn("no lab record; removing what is named after the default prefix", "dir", dir, "prefix", DefaultPrefix, "found", strings.Join(found, ", "))
		l = recoverLab(dir, DefaultPrefix, listNamespaces())
	case opts.Prefix == "":
		return fmt.Errorf("%w; to remove what is named after a prefix, give it (--prefix %s for the default lab)", err, DefaultPrefix)
	default:
		if err := checkPrefix(opts.Prefix); err != nil {
			return err
		}
		log.Warn("no usable lab record; removing what is named after the prefix", "dir", dir, "prefix", opts.Prefix, "err", err)
		l = recoverLab(dir, opts.Prefix, listNamespaces())
	}
	l.Dir = dir

	// Guests are found while their veth still ties them to a server
	// namespace, and recorded before anything is removed, so that a
	// second Down finds them even once that tie is gone.
	if err := l.recordGuests(log); err != nil {
		return err
	}

	plan := planCleanup(l, observe(l))
	for _, t := range plan.StopAgents {
		log.Info("stopping", "pid", t.PID, "what", t.Why)
	}
	killAll(plan.StopAgents, opts.Grace, log)
	for _, s := range plan.Cleanups {
		l.runCleanup(ctx, s, opts.Binary, opts.CleanupTimeout, log)
	}

	if err := l.recordGuests(log); err != nil {
		return err
	}
	var errs []error
	// A few rounds, for processes forked while their parents were being
	// stopped.
	for round := 0; round < 3; round++ {
		plan = planCleanup(l, observe(l))
		if len(plan.Kill) == 0 {
			break
		}
		for _, t := range plan.Kill {
			log.Info("stopping", "pid", t.PID, "what", t.Why)
		}
		killAll(plan.Kill, opts.Grace, log)
	}
	plan = planCleanup(l, observe(l))
	for _, t := range plan.Kill {
		errs = append(errs, fmt.Errorf("lab: process %d (%s) would not stop", t.PID, t.Why))
	}

	for _, ns := range plan.Namespaces {
		log.Info("deleting namespace", "namespace", ns)
		if err := hostns.Delete(ns); err != nil {
			errs = append(errs, err)
		}
	}
	for _, link := range plan.RootLinks {
		log.Info("deleting link", "link", link)
		if err := deleteRootLink(link); err != nil {
			errs = append(errs, err)
		}
	}
	for _, sock := range plan.Sockets {
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("lab: remove %s: %w", sock, err))
		}
	}
	// Normally the agents' cleanup removed their guests' cgroups; when it
	// could not run, the guests' processes are gone by now and their
	// empty cgroups can go too.
	if err := removeGuestCgroups(l.GuestNamespaces, cgroupMounts()); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		// The record stays, so that the next Down (or `lab down` by hand)
		// knows what is left and whose it is.
		return errors.Join(errs...)
	}
	if err := removeDir(dir, opts.KeepLogs); err != nil {
		return err
	}
	if left := l.leftovers(); len(left) > 0 {
		return fmt.Errorf("lab: still present after down (run it again, or remove by hand): %s", strings.Join(left, "; "))
	}
	log.Info("lab is down", "dir", dir)
	return nil
}

// objectsNamed lists the namespaces and root links on this machine named
// after prefix.
func objectsNamed(prefix string) []string {
	var out []string
	for _, ns := range listNamespaces() {
		if strings.HasPrefix(ns, prefix) {
			out = append(out, "namespace "+ns)
		}
	}
	if rootLinkExists(rootLink(prefix)) {
		out = append(out, "link "+rootLink(prefix))
	}
	return out
}

func defaultDirAbs() string {
	d, err := filepath.Abs(DefaultDir())
	if err != nil {
		return DefaultDir()
	}
	return d
}

// observe reads what exists of the lab.
func observe(l *Lab) observation {
	obs := observation{
		Self:       os.Getpid(),
		Ancestors:  ancestors(os.Getpid()),
		Namespaces: map[string]uint64{},
		RootLinks:  map[string]bool{},
		Sockets:    map[string]bool{},
	}
	obs.Procs, _ = listProcs("/proc")
	for _, ns := range l.allNamespaces() {
		if ino, err := hostns.Inode(ns); err == nil {
			obs.Namespaces[ns] = ino
		}
	}
	// Unnamed guest namespaces (held only by their processes) count as
	// lab namespaces too: their processes are the lab's.
	for ino, what := range unnamedGuests(l, obs.Procs) {
		obs.Namespaces[what] = ino
	}
	for _, link := range append(append([]string(nil), l.RootLinks...), wireGuardNames(l)...) {
		if rootLinkExists(link) {
			obs.RootLinks[link] = true
		}
	}
	for _, sock := range wireGuardSockets(l) {
		if _, err := os.Stat(sock); err == nil {
			obs.Sockets[sock] = true
		}
	}
	return obs
}

func ancestors(pid int) map[int]bool {
	m := map[int]bool{}
	for i := 0; i < 64 && pid > 1; i++ {
		info, err := readProc("/proc", pid)
		if err != nil {
			break
		}
		pid = info.PPID
		m[pid] = true
	}
	return m
}

// listNamespaces lists the named network namespaces of the machine.
func listNamespaces() []string { return hostns.List() }

// serverNamespaceFds opens the lab's server namespaces that exist.
func (l *Lab) serverNamespaceFds() []netns.NsHandle {
	var out []netns.NsHandle
	for _, s := range l.Servers {
		if h, err := hostns.Open(s.Namespace); err == nil {
			out = append(out, h)
		}
	}
	return out
}

// linkedToServer reports whether the namespace at path has a link whose
// peer lives in one of the given server namespaces: how the guests an
// agent made are told apart from anything else on the machine.
func linkedToServer(path string, servers []netns.NsHandle) bool {
	cand, err := netns.GetFromPath(path)
	if err != nil {
		return false
	}
	defer cand.Close()
	h, err := netlink.NewHandleAt(cand)
	if err != nil {
		return false
	}
	defer h.Close()
	// Links first: the kernel gives a peer namespace its ID lazily, when
	// a link dump needs it, so asking for the ID before could say "none".
	links, err := h.LinkList()
	if err != nil {
		return false
	}
	var ids []int
	for _, s := range servers {
		if id, err := h.GetNetNsIdByFd(int(s)); err == nil && id >= 0 {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return false
	}
	for _, link := range links {
		for _, id := range ids {
			if link.Attrs().NetNsID == id {
				return true
			}
		}
	}
	return false
}

// recordGuests finds the named guest namespaces of the lab's agents and
// adds them to lab.json.
func (l *Lab) recordGuests(log *slog.Logger) error {
	servers := l.serverNamespaceFds()
	defer func() {
		for _, s := range servers {
			s.Close()
		}
	}()
	changed := false
	recorded := recordedGuestNamespaces(l)
	for _, name := range listNamespaces() {
		if contains(l.Namespaces, name) || contains(l.GuestNamespaces, name) {
			continue
		}
		if recorded[name] || linkedToServer(hostns.Path(name), servers) {
			log.Info("found a guest namespace of the lab", "namespace", name)
			l.GuestNamespaces = append(l.GuestNamespaces, name)
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if _, err := os.Stat(l.Dir); err != nil {
		return nil // no directory to record into: a recovered lab
	}
	return l.save()
}

// recordedGuestNamespaces reads the guest namespaces the lab's agents
// recorded in their state directories (guest.RecordFile of the netns
// runtime, field Netns). Only names with our prefix are taken: a state
// file never makes Down delete a namespace Corridor could not have made.
func recordedGuestNamespaces(l *Lab) map[string]bool {
	out := map[string]bool{}
	for _, s := range l.Servers {
		if s.StateDir == "" {
			continue
		}
		root := filepath.Clean(s.StateDir)
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.IsDir() && strings.Count(strings.TrimPrefix(path, root), "/") > 3 {
				return filepath.SkipDir
			}
			if d.IsDir() || d.Name() != guest.RecordFile {
				return nil
			}
			var rec guest.Record
			if guest.ReadJSON(path, &rec) == nil && strings.HasPrefix(rec.Netns, "cor") && !strings.Contains(rec.Netns, "/") {
				out[rec.Netns] = true
			}
			return nil
		})
	}
	return out
}

// unnamedGuests finds network namespaces that are held only by processes
// and linked to a lab server namespace. Keys are inodes, values a label.
func unnamedGuests(l *Lab, procs []procInfo) map[uint64]string {
	servers := l.serverNamespaceFds()
	defer func() {
		for _, s := range servers {
			s.Close()
		}
	}()
	out := map[uint64]string{}
	if len(servers) == 0 {
		return out
	}
	known := map[uint64]bool{}
	for _, ns := range listNamespaces() {
		if ino, err := hostns.Inode(ns); err == nil {
			known[ino] = true
		}
	}
	if ino, err := ownNamespaceInode(); err == nil {
		known[ino] = true
	}
	for _, p := range procs {
		if p.NetNS == 0 || known[p.NetNS] {
			continue
		}
		known[p.NetNS] = true
		if linkedToServer("/proc/"+strconv.Itoa(p.PID)+"/ns/net", servers) {
			out[p.NetNS] = "unnamed guest namespace of pid " + strconv.Itoa(p.PID)
		}
	}
	return out
}

// runCleanup asks the agent of s to remove its guests, devices and rules,
// inside the server's namespace. A failure is logged, not fatal: the
// namespaces go away next, which removes the devices and rules anyway.
func (l *Lab) runCleanup(ctx context.Context, s Server, fallback string, timeout time.Duration, log *slog.Logger) {
	bin := l.Binary
	if _, err := os.Stat(bin); bin == "" || err != nil {
		bin = fallback
	}
	if bin == "" {
		log.Warn("no corridor binary to run the agent's cleanup; removing its namespace only", "server", s.Name)
		return
	}
	args := []string{bin, "agent", "--cleanup",
		"--name", s.Name,
		"--guest-scope", s.GuestScope(),
		"--state-dir", s.StateDir,
		"--underlay-iface", serverIface,
	}
	if s.WireGuardName != "" {
		args = append(args, "--wg-name", s.WireGuardName)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	log.Info("cleaning up the agent's guests and devices", "server", s.Name)
	out, err := runIn(ctx, s.Namespace, args)
	if s.Log != "" {
		if f, ferr := os.OpenFile(s.Log, os.O_WRONLY|os.O_APPEND, 0); ferr == nil {
			fmt.Fprintf(f, "--- corridor agent --cleanup (lab down) ---\n%s", out)
			f.Close()
		}
	}
	if err != nil {
		log.Warn("agent cleanup failed; removing its namespace anyway", "server", s.Name, "err", err, "output", strings.TrimSpace(string(out)))
	}
}

// killAll sends SIGTERM to every target still alive, waits up to grace for
// all of them, then sends SIGKILL to those left. Every signal is preceded
// by a start-time check, so a reused PID is never hit.
func killAll(targets []target, grace time.Duration, log *slog.Logger) {
	var live []target
	for _, t := range targets {
		if gone(t.PID, t.StartTime) {
			continue
		}
		if err := unix.Kill(t.PID, unix.SIGTERM); err == nil {
			live = append(live, t)
		}
	}
	deadline := time.Now().Add(grace)
	for len(live) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		live = stillAlive(live)
	}
	for _, t := range live {
		if info, err := readProc("/proc", t.PID); err == nil && info.StartTime == t.StartTime {
			log.Warn("did not stop on SIGTERM; killing", "pid", t.PID, "what", t.Why)
			_ = unix.Kill(t.PID, unix.SIGKILL)
		}
	}
	for i := 0; i < 100 && len(live) > 0; i++ {
		time.Sleep(20 * time.Millisecond)
		live = stillAlive(live)
	}
}

func stillAlive(ts []target) []target {
	var out []target
	for _, t := range ts {
		if !gone(t.PID, t.StartTime) {
			out = append(out, t)
		}
	}
	return out
}

// removeDir removes what the lab keeps in dir, and dir itself when that
// leaves it empty. Only the lab's own entries are removed, so that a
// mistaken --dir never wipes anything else. Mounts under dir (a guest
// namespace bind-mounted into a state directory) are detached first, or
// the removal would fail on them.
func removeDir(dir string, keepLogs bool) error {
	for _, m := range mountsUnder(dir) {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	for _, e := range ents {
		if !labEntry(e.Name()) || keepLogs && e.Name() == "logs" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("lab: remove %s: %w", filepath.Join(dir, e.Name()), err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("lab: remove %s: %w", dir, err)
	}
	return nil
}

// labEntry reports whether a name in the lab directory is one the lab
// makes: its record, the logs, the server's data, the outside service's
// data and the servers' state.
func labEntry(name string) bool {
	switch name {
	case StateFile, StateFile + ".tmp", "logs", "server", "bin", outsideDataDir, vmDir:
		return true
	}
	n, ok := strings.CutPrefix(name, "s")
	if !ok || n == "" {
		return false
	}
	_, err := strconv.Atoi(n)
	return err == nil
}

// removeGuestCgroups removes the empty cgroup directories the netns guest
// runtime made for the guests (<mount>/guest.CgroupRel(parent, name), name
// being the guest's namespace name without guest.NetnsPrefix).
// rmdir removes only empty cgroups, never files.
func removeGuestCgroups(guestNamespaces, mounts []string) error {
	var errs []error
	for _, ns := range guestNamespaces {
		name, ok := strings.CutPrefix(ns, guest.NetnsPrefix)
		if !ok || name == "" || strings.Contains(name, "/") {
			continue
		}
		for _, m := range mounts {
			dir := filepath.Join(m, guest.CgroupRel(guest.DefaultCgroupParent, name))
			if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("lab: remove cgroup %s: %w", dir, err))
			}
		}
	}
	// The parent too, once empty: it is ours, and a cgroup with children
	// or tasks refuses rmdir, so guests of anyone else are never touched.
	for _, m := range mounts {
		_ = unix.Rmdir(filepath.Join(m, guest.DefaultCgroupParent))
	}
	return errors.Join(errs...)
}

// cgroupMounts lists the mount points of cgroup hierarchies (v1 and v2).
func cgroupMounts() []string {
	ms, err := mountinfo.Read()
	if err != nil {
		return nil
	}
	return cgroupPoints(ms)
}

func cgroupPoints(ms []mountinfo.Mount) []string {
	var out []string
	for _, m := range ms {
		if m.FSType == "cgroup" || m.FSType == "cgroup2" {
			out = append(out, m.Point)
		}
	}
	return out
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	ms, err := mountinfo.Read()
	if err != nil {
		return nil
	}
	return pointsUnder(ms, dir)
}

func pointsUnder(ms []mountinfo.Mount, dir string) []string {
	var out []string
	for _, m := range ms {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			out = append(out, m.Point)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// leftovers lists what of the lab still exists.
func (l *Lab) leftovers() []string {
	var out []string
	for _, ns := range l.allNamespaces() {
		if hostns.Exists(ns) {
			out = append(out, "namespace "+ns)
		}
	}
	for _, link := range l.RootLinks {
		if rootLinkExists(link) {
			out = append(out, "link "+link)
		}
	}
	for _, p := range l.processes() {
		if alive(&p) {
			out = append(out, fmt.Sprintf("process %d (%s)", p.PID, p.Name))
		}
	}
	return out
}
