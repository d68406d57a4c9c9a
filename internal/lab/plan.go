package lab

import (
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/corridor-dev/corridor/internal/dataplane"
)

// observation is what Down saw on the machine: the impure half of cleanup.
// planCleanup turns it and the lab's record into a plan without touching
// anything, so that the decisions are unit-tested without root.
type observation struct {
	// Self and its ancestors are never killed, even when they run inside
	// a lab namespace (a shell entered with `ip netns exec`).
	Self      int
	Ancestors map[int]bool
	Procs     []procInfo
	// Namespaces maps each lab namespace present to its inode.
	Namespaces map[string]uint64
	// RootLinks are the root-namespace links present, among those Down
	// asked about.
	RootLinks map[string]bool
	// Sockets are the WireGuard UAPI sockets present, among those Down
	// asked about.
	Sockets map[string]bool
}

// target is a process to end.
type target struct {
	PID       int
	StartTime uint64
	Why       string
}

// cleanupPlan is what Down does, in order.
type cleanupPlan struct {
	// StopAgents are the lab's agents still running: they stop first so
	// that none of them re-creates what its cleanup removes.
	StopAgents []target
	// Cleanups are the servers whose namespace still exists: their agent
	// is asked to remove its guests, devices and rules.
	Cleanups []Server
	// Kill is every other process of the lab: the control plane, and any
	// process living in a lab namespace or named by its directory.
	Kill []target
	// Namespaces to delete: guests first, then servers, then underlay.
	Namespaces []string
	RootLinks  []string
	Sockets    []string
}

// planCleanup decides what Down removes. Processes are matched by PID and
// start time (recorded ones), by network namespace inode, or by a
// --data-dir/--state-dir argument inside the lab's directory (a process
// started between its fork and its record in lab.json).
func planCleanup(l *Lab, obs observation) cleanupPlan {
	var p cleanupPlan
	spared := func(pid int) bool { return pid == obs.Self || obs.Ancestors[pid] || pid <= 1 }
	taken := map[int]bool{}
	add := func(list *[]target, info procInfo, why string) {
		if taken[info.PID] || spared(info.PID) {
			return
		}
		taken[info.PID] = true
		*list = append(*list, target{PID: info.PID, StartTime: info.StartTime, Why: why})
	}
	// Zombies are ended already; only their parent can reap them.
	var procs []procInfo
	for _, info := range obs.Procs {
		if info.State != 'Z' {
			procs = append(procs, info)
		}
	}
	byPID := map[int]procInfo{}
	for _, info := range procs {
		byPID[info.PID] = info
	}

	for _, s := range l.Servers {
		if s.Agent == nil {
			continue
		}
		if info, ok := byPID[s.Agent.PID]; ok && sameProcess(*s.Agent, info) {
			add(&p.StopAgents, info, "agent "+s.Name)
		}
	}
	for _, s := range l.Servers {
		if _, ok := obs.Namespaces[s.Namespace]; ok {
			p.Cleanups = append(p.Cleanups, s)
		}
	}

	if l.Control != nil {
		if info, ok := byPID[l.Control.PID]; ok && sameProcess(*l.Control, info) {
			add(&p.Kill, info, "control plane")
		}
	}
	inodes := map[uint64]string{}
	for name, ino := range obs.Namespaces {
		if ino != 0 {
			inodes[ino] = name
		}
	}
	for _, info := range procs {
		if name, ok := inodes[info.NetNS]; ok && info.NetNS != 0 {
			add(&p.Kill, info, "lives in namespace "+name)
		}
	}
	for _, info := range procs {
		if refersToDir(info.Args, l.Dir) {
			add(&p.Kill, info, "runs with a directory of the lab")
		}
	}
	sort.Slice(p.Kill, func(i, j int) bool { return p.Kill[i].PID < p.Kill[j].PID })

	// Guests before servers before underlay: removing a server namespace
	// takes the veth of its guests with it, and a guest's own cleanup is
	// easier to read in logs while its veth exists.
	guests := sortedPresent(l.GuestNamespaces, obs.Namespaces)
	servers := []string{}
	for _, s := range l.Servers {
		servers = append(servers, s.Namespace)
	}
	var rest []string
	for _, ns := range l.Namespaces {
		if !contains(servers, ns) && !contains(l.GuestNamespaces, ns) {
			rest = append(rest, ns)
		}
	}
	p.Namespaces = append(p.Namespaces, guests...)
	p.Namespaces = append(p.Namespaces, sortedPresent(servers, obs.Namespaces)...)
	p.Namespaces = append(p.Namespaces, sortedPresent(rest, obs.Namespaces)...)

	for _, link := range append(append([]string(nil), l.RootLinks...), wireGuardNames(l)...) {
		if obs.RootLinks[link] && !contains(p.RootLinks, link) {
			p.RootLinks = append(p.RootLinks, link)
		}
	}
	for _, sock := range wireGuardSockets(l) {
		if obs.Sockets[sock] {
			p.Sockets = append(p.Sockets, sock)
		}
	}
	return p
}

// refersToDir reports whether a command line names a data or state
// directory inside dir: the flags lab gives the server and the agents.
func refersToDir(args []string, dir string) bool {
	if dir == "" || dir == "/" {
		return false
	}
	inside := func(path string) bool {
		path = filepath.Clean(path)
		return path == dir || strings.HasPrefix(path, dir+"/")
	}
	for i, a := range args {
		for _, flag := range []string{"--data-dir", "--state-dir"} {
			if a == flag && i+1 < len(args) && inside(args[i+1]) {
				return true
			}
			if v, ok := strings.CutPrefix(a, flag+"="); ok && inside(v) {
				return true
			}
		}
	}
	return false
}

func sortedPresent(names []string, present map[string]uint64) []string {
	var out []string
	for _, n := range names {
		if _, ok := present[n]; ok && !contains(out, n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// wireGuardNames are the WireGuard device names of the lab's servers,
// each with that of its second device of a key rotation
// (dataplane.SpareName), which a host left mid-rotation still has.
func wireGuardNames(l *Lab) []string {
	var out []string
	for _, s := range l.Servers {
		if s.WireGuardName != "" {
			out = append(out, s.WireGuardName, dataplane.SpareName(s.WireGuardName))
		}
	}
	return out
}

// wireGuardSocketDir is wireguard-go's machine-wide UAPI socket directory.
const wireGuardSocketDir = "/var/run/wireguard"

func wireGuardSockets(l *Lab) []string {
	var out []string
	for _, n := range wireGuardNames(l) {
		out = append(out, filepath.Join(wireGuardSocketDir, n+".sock"))
	}
	return out
}

// recoverLab rebuilds a lab record from what exists on the machine when
// lab.json is missing: the namespaces and links named after the prefix.
// present lists the named namespaces on the machine.
func recoverLab(dir, prefix string, present []string) *Lab {
	l := &Lab{Version: stateVersion, Dir: dir, Prefix: prefix, RootLinks: []string{rootLink(prefix)}}
	serverRe := regexp.MustCompile("^" + regexp.QuoteMeta(prefix) + `s([0-9]+)$`)
	for _, ns := range present {
		switch {
		case ns == underlayNamespace(prefix):
			l.UnderlayNamespace = ns
			l.Namespaces = append(l.Namespaces, ns)
		case ns == outsideNamespace(prefix), ns == clientNamespace(prefix):
			l.Namespaces = append(l.Namespaces, ns)
		case serverRe.MatchString(ns):
			name := strings.TrimPrefix(ns, prefix)
			i := serverRe.FindStringSubmatch(ns)[1]
			l.Namespaces = append(l.Namespaces, ns)
			l.Servers = append(l.Servers, Server{
				Name:          name,
				Namespace:     ns,
				StateDir:      filepath.Join(dir, name),
				WireGuardName: base(prefix) + "w" + i,
			})
		}
	}
	sort.Strings(l.Namespaces)
	sort.Slice(l.Servers, func(i, j int) bool { return l.Servers[i].Name < l.Servers[j].Name })
	return l
}
