package lab

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/mountinfo"
)

// planLab is a two-server lab as Up records it, with the processes it
// started.
func planLab() *Lab {
	o := Options{Dir: "/var/lib/lab", Servers: 2, Prefix: "corlab-", Underlay: DefaultUnderlay, ServerPort: 7443, AgentPort: 7444, Binary: "/usr/bin/corridor"}
	l := newLab(o)
	l.Namespaces = []string{"corlab-ul", "corlab-s1", "corlab-s2"}
	l.RootLinks = []string{"corlab0"}
	l.Control = &Process{Role: RoleServer, Name: "server", PID: 100, StartTime: 1000, Args: l.controlArgs()}
	l.Servers[0].Agent = &Process{Role: RoleAgent, Name: "s1", PID: 101, StartTime: 1001}
	l.Servers[1].Agent = &Process{Role: RoleAgent, Name: "s2", PID: 102, StartTime: 1002}
	l.GuestNamespaces = []string{"cor-shop-web-0"}
	return l
}

func pids(ts []target) []int {
	var out []int
	for _, t := range ts {
		out = append(out, t.PID)
	}
	return out
}

func TestPlanCleanupProcesses(t *testing.T) {
	l := planLab()
	obs := observation{
		Self:      500,
		Ancestors: map[int]bool{499: true},
		Procs: []procInfo{
			{PID: 100, StartTime: 1000, NetNS: 1},  // control plane, root ns
			{PID: 101, StartTime: 1001, NetNS: 11}, // agent s1
			{PID: 102, StartTime: 9999, NetNS: 1},  // s2's PID, reused by another process
			{PID: 200, StartTime: 5, NetNS: 12},    // something in s2's namespace
			{PID: 201, StartTime: 5, NetNS: 20},    // a task in a guest namespace
			{PID: 202, StartTime: 5, NetNS: 99},    // an unrelated namespace
			{PID: 203, StartTime: 5, NetNS: 1, Args: []string{"corridor", "agent", "--state-dir", "/var/lib/lab/s3"}},  // started, not yet recorded
			{PID: 204, StartTime: 5, NetNS: 1, Args: []string{"corridor", "server", "--data-dir=/var/lib/lab/server"}}, // idem, = form
			{PID: 205, StartTime: 5, NetNS: 1, Args: []string{"corridor", "agent", "--state-dir", "/var/lib/lab2/s1"}}, // another lab
			{PID: 206, StartTime: 5, NetNS: 1, Args: []string{"sh", "-c", "corridor agent --state-dir /var/lib/lab/s1"}},
			{PID: 500, StartTime: 5, NetNS: 11},             // lab down itself, run inside s1
			{PID: 499, StartTime: 5, NetNS: 11},             // its shell
			{PID: 1, StartTime: 1, NetNS: 11},               // never init
			{PID: 207, StartTime: 5, NetNS: 12, State: 'Z'}, // ended, not yet reaped
		},
		Namespaces: map[string]uint64{"corlab-ul": 10, "corlab-s1": 11, "corlab-s2": 12, "cor-shop-web-0": 20},
	}
	p := planCleanup(l, obs)
	if got := pids(p.StopAgents); !reflect.DeepEqual(got, []int{101}) {
		t.Errorf("stop agents %v, want [101] (102 is a reused PID)", got)
	}
	if got := pids(p.Kill); !reflect.DeepEqual(got, []int{100, 200, 201, 203, 204}) {
		t.Errorf("kill %v, want [100 200 201 203 204]", got)
	}
	for _, k := range p.Kill {
		if k.Why == "" || k.StartTime == 0 {
			t.Errorf("target without reason or start time: %+v", k)
		}
	}
	if len(p.Cleanups) != 2 || p.Cleanups[0].Name != "s1" || p.Cleanups[1].Name != "s2" {
		t.Errorf("cleanups %+v", p.Cleanups)
	}
}

func TestPlanCleanupNamespacesInOrder(t *testing.T) {
	l := planLab()
	l.GuestNamespaces = append(l.GuestNamespaces, "cor-gone-0", "cor-a-db-0")
	obs := observation{
		Namespaces: map[string]uint64{"corlab-ul": 10, "corlab-s2": 12, "cor-shop-web-0": 20, "cor-a-db-0": 21},
		RootLinks:  map[string]bool{"corlab0": true, "corlabw2": true},
		Sockets:    map[string]bool{"/var/run/wireguard/corlabw1.sock": true},
	}
	p := planCleanup(l, obs)
	want := []string{"cor-a-db-0", "cor-shop-web-0", "corlab-s2", "corlab-ul"}
	if !reflect.DeepEqual(p.Namespaces, want) {
		t.Errorf("namespaces %v, want %v (guests, servers, underlay; only present ones)", p.Namespaces, want)
	}
	if !reflect.DeepEqual(p.RootLinks, []string{"corlab0", "corlabw2"}) {
		t.Errorf("root links %v", p.RootLinks)
	}
	if !reflect.DeepEqual(p.Sockets, []string{"/var/run/wireguard/corlabw1.sock"}) {
		t.Errorf("sockets %v", p.Sockets)
	}
	// s1's namespace is gone: its cleanup cannot run there (never in the
	// root namespace, where it would touch the machine's own devices).
	if len(p.Cleanups) != 1 || p.Cleanups[0].Name != "s2" {
		t.Errorf("cleanups %+v, want only s2", p.Cleanups)
	}
}

func TestPlanCleanupNothingLeft(t *testing.T) {
	p := planCleanup(planLab(), observation{Namespaces: map[string]uint64{}})
	if len(p.StopAgents)+len(p.Kill)+len(p.Cleanups)+len(p.Namespaces)+len(p.RootLinks)+len(p.Sockets) != 0 {
		t.Errorf("plan for a removed lab: %+v", p)
	}
}

func TestPlanCleanupPartialRecord(t *testing.T) {
	// Up crashed after recording the underlay namespace and before making
	// any server: no servers' processes, no links.
	l := &Lab{Version: stateVersion, Dir: "/tmp/x", Prefix: "corlab-", Namespaces: []string{"corlab-ul"}}
	p := planCleanup(l, observation{Namespaces: map[string]uint64{"corlab-ul": 10}, Procs: []procInfo{{PID: 300, StartTime: 3, NetNS: 10}}})
	if !reflect.DeepEqual(p.Namespaces, []string{"corlab-ul"}) || !reflect.DeepEqual(pids(p.Kill), []int{300}) {
		t.Errorf("plan %+v", p)
	}
}

func TestRecoverLab(t *testing.T) {
	present := []string{"corlab-s2", "corlab-ul", "corlab-s10", "corlab-sx", "corlabx-s1", "cor-shop-web-0", "other"}
	l := recoverLab("/d", "corlab-", present)
	if !reflect.DeepEqual(l.Namespaces, []string{"corlab-s10", "corlab-s2", "corlab-ul"}) {
		t.Errorf("namespaces %v", l.Namespaces)
	}
	var names []string
	for _, s := range l.Servers {
		names = append(names, s.Name+":"+s.StateDir+":"+s.WireGuardName)
	}
	if !reflect.DeepEqual(names, []string{"s10:/d/s10:corlabw10", "s2:/d/s2:corlabw2"}) {
		t.Errorf("servers %v", names)
	}
	if !reflect.DeepEqual(l.RootLinks, []string{"corlab0"}) {
		t.Errorf("root links %v", l.RootLinks)
	}
}

func TestRefersToDir(t *testing.T) {
	cases := []struct {
		args []string
		want bool
	}{
		{[]string{"x", "--state-dir", "/lab/s1"}, true},
		{[]string{"x", "--data-dir", "/lab"}, true},
		{[]string{"x", "--data-dir=/lab/server/"}, true},
		{[]string{"x", "--state-dir", "/lab2/s1"}, false},
		{[]string{"x", "--state-dir"}, false},
		{[]string{"x", "--dir", "/lab"}, false},
		{[]string{"x", "/lab/s1"}, false},
	}
	for _, c := range cases {
		if got := refersToDir(c.args, "/lab"); got != c.want {
			t.Errorf("%v: %v, want %v", c.args, got, c.want)
		}
	}
	if refersToDir([]string{"x", "--data-dir", "/"}, "/") {
		t.Error("the root directory matched")
	}
}

func TestParseMountsUnder(t *testing.T) {
	info := `22 1 0:21 / / rw - ext4 /dev/root rw
601 22 0:4 net:[4026532] /var/lib/lab/s1/guests/a rw - nsfs nsfs rw
602 22 0:4 net:[4026533] /var/lib/lab/s1/my\040guest rw - nsfs nsfs rw
603 22 0:4 net:[4026534] /var/lib/lab2/s1/x rw - nsfs nsfs rw
604 22 0:22 / /var/lib/lab rw - tmpfs tmpfs rw
`
	ms, err := mountinfo.Parse(strings.NewReader(info))
	if err != nil {
		t.Fatal(err)
	}
	got := pointsUnder(ms, "/var/lib/lab")
	want := []string{"/var/lib/lab/s1/guests/a", "/var/lib/lab/s1/my guest", "/var/lib/lab"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mounts %q, want %q (deepest first)", got, want)
	}
}

func TestLabEntry(t *testing.T) {
	for name, want := range map[string]bool{
		"lab.json": true, "lab.json.tmp": true, "logs": true, "server": true, "outside": true, "s1": true, "s12": true,
		"s": false, "sx": false, "notes.txt": false, "home": false,
	} {
		if labEntry(name) != want {
			t.Errorf("%q: %v, want %v", name, !want, want)
		}
	}
}

func TestNth(t *testing.T) {
	p := netip.MustParsePrefix("198.18.3.0/24")
	if rootAddr(p).String() != "198.18.3.1" || serverAddr(p, 5).String() != "198.18.3.15" || broadcast(p).String() != "198.18.3.255" {
		t.Errorf("root %s server5 %s bcast %s", rootAddr(p), serverAddr(p, 5), broadcast(p))
	}
	// Carry into the next octet in a larger subnet.
	if got := serverAddr(netip.MustParsePrefix("198.18.0.0/16"), 250); got.String() != "198.18.1.4" {
		t.Errorf("server 250 in a /16: %s", got)
	}
}

func TestParseCgroupMounts(t *testing.T) {
	info := `30 22 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs ro
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory
`
	ms, err := mountinfo.Parse(strings.NewReader(info))
	if err != nil {
		t.Fatal(err)
	}
	got := cgroupPoints(ms)
	want := []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/memory"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cgroup mounts %q, want %q", got, want)
	}
}

func TestRemoveGuestCgroups(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"corridor/shop-web-0", "corridor/shop-db-0/child", "corridor/other-0"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	err := removeGuestCgroups([]string{"cor-shop-web-0", "cor-shop-db-0", "cor-gone-0", "notours"}, []string{root})
	if _, serr := os.Stat(filepath.Join(root, "corridor/shop-web-0")); !os.IsNotExist(serr) {
		t.Errorf("empty guest cgroup kept: %v", serr)
	}
	// A non-empty one is reported, not forced.
	if err == nil || !strings.Contains(err.Error(), "shop-db-0") {
		t.Errorf("error %v, want one naming shop-db-0", err)
	}
	if _, serr := os.Stat(filepath.Join(root, "corridor/other-0")); serr != nil {
		t.Errorf("another guest's cgroup removed: %v", serr)
	}
}
