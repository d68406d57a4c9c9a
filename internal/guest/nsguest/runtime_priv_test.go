package nsguest

import (
	"bytes"
	"context"
	"fmt"
	"github.com/corridor-dev/corridor/internal/hostns"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// helperEnv makes the test binary act as a guest program (see TestMain).
const helperEnv = "CORRIDOR_GUEST_TEST_HELPER"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == InitArg {
		// The runtime's InitBinary defaults to this test binary.
		os.Exit(InitMain())
	}
	if os.Getenv(helperEnv) == "http" {
		// A guest program: HTTP on :8080 answering with its task ID.
		http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, os.Getenv("CORRIDOR_TASK"))
		})
		// Listen before saying so: the test dials as soon as it reads
		// the line.
		l, err := net.Listen("tcp", ":8080")
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("helper listening")
		if err := http.Serve(l, nil); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
	}
	os.Exit(testnet.Main(m))
}

// env is one privileged test's world: its own host netns, state dir and
// cgroup parent, and a runtime on them.
type env struct {
	t       testing.TB
	hostNS  string // name under /run/netns
	cfg     Config
	r       *Runtime
	tasks   []string
	ifCount int
}

func needRoot(t testing.TB) {
	t.Helper()
	testnet.NeedRoot(t, "creates network namespaces, veths and cgroups")
	if _, err := guest.DetectCgroups(); err != nil {
		t.Skipf("needs cpu and memory cgroups: %v", err)
	}
}

var envSeq int

func newEnv(t testing.TB, mod func(*Config)) *env {
	t.Helper()
	needRoot(t)
	envSeq++
	e := &env{t: t, hostNS: testnet.Namespaces(t, "guest", "h"+strconv.Itoa(envSeq))[0]}
	parent := fmt.Sprintf("cortst-guest-%d", os.Getpid())
	e.cfg = Config{
		HostNetns:    testnet.Path(e.hostNS),
		StateDir:     t.TempDir(),
		CgroupParent: filepath.Join(parent, strconv.Itoa(envSeq)),
		BackoffMin:   50 * time.Millisecond,
		BackoffMax:   400 * time.Millisecond,
		Grace:        2 * time.Second,
	}
	if mod != nil {
		mod(&e.cfg)
	}
	e.r = e.newRuntime()
	t.Cleanup(func() {
		ctx := context.Background()
		for _, task := range e.tasks {
			if err := e.r.Remove(ctx, task); err != nil {
				t.Errorf("cleanup: remove %s: %v", task, err)
			}
		}
		e.r.Close()
		for _, d := range e.r.cgroup("x/y/0").Dirs() {
			os.Remove(filepath.Dir(d))
			os.Remove(filepath.Dir(filepath.Dir(d)))
		}
	})
	return e
}

func (e *env) newRuntime() *Runtime {
	e.t.Helper()
	r, err := New(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// guest makes a guest of this test with a unique task ID and interface.
func (e *env) guest(class string, cmd ...string) compile.Guest {
	e.ifCount++
	task := fmt.Sprintf("gt%d/%s/%d", os.Getpid(), class, envSeq)
	e.tasks = append(e.tasks, task)
	return compile.Guest{
		Task: task, App: fmt.Sprintf("gt%d", os.Getpid()), Class: class, Index: envSeq,
		Address:   netip.AddrFrom4([4]byte{100, 64, byte(envSeq), byte(10 + e.ifCount)}),
		HostIf:    fmt.Sprintf("corgt%d%c", os.Getpid()%10000000, 'a'+e.ifCount),
		Spec:      spec.Guest{Runtime: spec.RuntimeNetns, Command: cmd},
		Resources: spec.Resources{CPU: 250, Memory: 64 << 20},
		Env:       map[string]string{"CORRIDOR_TASK": task, "CORRIDOR_CLASS": class},
	}
}

func (e *env) ensure(g compile.Guest) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.r.Ensure(ctx, g); err != nil {
		e.t.Fatalf("Ensure %s: %v", g.Task, err)
	}
}

func (e *env) hostHandle() *netlink.Handle { return e.r.host.Handle() }

func (e *env) guestHandle(task string) (*netlink.Handle, netns.NsHandle) {
	e.t.Helper()
	ns, err := netns.GetFromName(guest.NetnsName(task))
	if err != nil {
		e.t.Fatalf("guest netns: %v", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { h.Close(); ns.Close() })
	return h, ns
}

// runningPID waits until the task's program runs and returns its PID.
func (e *env) runningPID(r *Runtime, task string) int {
	e.t.Helper()
	var pid int
	waitFor(e.t, task+" running", 10*time.Second, func() bool {
		tk, ok := r.tasks.Get(task)
		if !ok {
			return false
		}
		pid = tk.sup.PID()
		return pid > 0 && tk.sup.Status().State == api.TaskRunning
	})
	return pid
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func procEnviron(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// programPID is the program guest-init (pid, as the host sees it)
// started: its only child.
func programPID(t testing.TB, pid int) int {
	t.Helper()
	var child int
	initExe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	// The child exists from guest-init's fork; until it has exec'd the
	// program it is a copy of guest-init (its environment too).
	waitFor(t, "guest-init's child, the program", 5*time.Second, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		f := strings.Fields(string(b))
		if err != nil || len(f) == 0 {
			return false
		}
		child, err = strconv.Atoi(f[0])
		exe, xerr := os.Readlink(fmt.Sprintf("/proc/%d/exe", child))
		return err == nil && xerr == nil && exe != initExe
	})
	return child
}

// gone tells whether pid has exited (a zombie has).
func gone(pid int) bool { return !guest.ProcIDOf(pid).Alive() }

func TestEnsureCreatesGuest(t *testing.T) {
	e := newEnv(t, nil)
	g := e.guest("web", "sh", "-c", `echo "hello from $CORRIDOR_TASK"; echo "to stderr" >&2; exec sleep 1000`)
	e.ensure(g)
	pid := e.runningPID(e.r, g.Task)

	// Netns, visible to ip netns, and the program inside it.
	nsPath := guest.NetnsPath(g.Task)
	if !hostns.Exists(guest.NetnsName(g.Task)) {
		t.Fatalf("%s is not a netns mount", nsPath)
	}
	if a, b := inode(t, fmt.Sprintf("/proc/%d/ns/net", pid)), inode(t, nsPath); a != b {
		t.Errorf("program netns inode %d, guest netns %d", a, b)
	}
	out, err := exec.Command("ip", "netns", "exec", guest.NetnsName(g.Task), "ip", "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), g.Address.String()+"/32") {
		t.Errorf("ip netns exec: %v: %s", err, out)
	}

	// Host end: up, MTU, proxy ARP, route.
	hl, err := e.hostHandle().LinkByName(g.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	if hl.Attrs().MTU != guest.DefaultMTU || hl.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("host end: mtu %d flags %v", hl.Attrs().MTU, hl.Attrs().Flags)
	}
	var proxyARP string
	if err := nsrun.DoHandle(e.r.host.NS(), func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + g.HostIf + "/proxy_arp")
		proxyARP = strings.TrimSpace(string(b))
		return err
	}); err != nil || proxyARP != "1" {
		t.Errorf("proxy_arp = %q, %v", proxyARP, err)
	}
	checkHostRoute(t, e, g, true)

	// Guest side: address, gateway route, default route, neighbour.
	gh, _ := e.guestHandle(g.Task)
	eth, err := gh.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth.Attrs().MTU != guest.DefaultMTU || eth.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("guest eth0: mtu %d flags %v", eth.Attrs().MTU, eth.Attrs().Flags)
	}
	if lo, _ := gh.LinkByName("lo"); lo == nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Error("guest lo is down")
	}
	addrs, _ := gh.AddrList(eth, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != g.Address.String()+"/32" {
		t.Errorf("guest addresses %v", addrs)
	}
	routes, _ := gh.RouteList(eth, netlink.FAMILY_V4)
	var gwRoute, defRoute bool
	for _, r := range routes {
		switch {
		case r.Dst != nil && r.Dst.String() == "169.254.1.1/32" && r.Scope == netlink.SCOPE_LINK:
			gwRoute = true
		case (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == guest.GatewayAddr && r.Flags&int(netlink.FLAG_ONLINK) != 0:
			defRoute = true
		}
	}
	if !gwRoute || !defRoute {
		t.Errorf("guest routes %v: gateway route %v, default onlink %v", routes, gwRoute, defRoute)
	}

	// Cgroup limits, read back from the kernel, and membership.
	cg := e.r.cgroup(g.Task)
	if !e.r.cgroups.Unified() {
		if q := readTrim(t, filepath.Join(cg.Dir("cpu"), "cpu.cfs_quota_us")); q != "25000" {
			t.Errorf("cpu.cfs_quota_us = %s, want 25000", q)
		}
		if p := readTrim(t, filepath.Join(cg.Dir("cpu"), "cpu.cfs_period_us")); p != "100000" {
			t.Errorf("cpu.cfs_period_us = %s", p)
		}
		if m := readTrim(t, filepath.Join(cg.Dir("memory"), "memory.limit_in_bytes")); m != "67108864" {
			t.Errorf("memory.limit_in_bytes = %s", m)
		}
		// Its request weighs against its siblings'; their parent weighs
		// the host's CPUs against the host's own threads.
		if s := readTrim(t, filepath.Join(cg.Dir("cpu"), "cpu.shares")); s != "256" {
			t.Errorf("cpu.shares = %s, want 256 (250m)", s)
		}
		if s, want := readTrim(t, filepath.Join(filepath.Dir(cg.Dir("cpu")), "cpu.shares")), strconv.Itoa(1024*runtime.NumCPU()); s != want {
			t.Errorf("the parent's cpu.shares = %s, want %s", s, want)
		}
	} else {
		if c := readTrim(t, filepath.Join(cg.Dir(""), "cpu.max")); c != "25000 100000" {
			t.Errorf("cpu.max = %s", c)
		}
		if w := readTrim(t, filepath.Join(cg.Dir(""), "cpu.weight")); w != "25" {
			t.Errorf("cpu.weight = %s, want 25 (250m)", w)
		}
		if w, want := readTrim(t, filepath.Join(filepath.Dir(cg.Dir("")), "cpu.weight")), strconv.Itoa(100*runtime.NumCPU()); w != want {
			t.Errorf("the parent's cpu.weight = %s, want %s", w, want)
		}
		if m := readTrim(t, filepath.Join(cg.Dir(""), "memory.max")); m != "67108864" {
			t.Errorf("memory.max = %s", m)
		}
	}
	prog := programPID(t, pid)
	for _, d := range cg.Dirs() {
		if procs := strings.Fields(readTrim(t, filepath.Join(d, "cgroup.procs"))); !contains(procs, strconv.Itoa(pid)) || !contains(procs, strconv.Itoa(prog)) {
			t.Errorf("%s/cgroup.procs = %q, want guest-init %d and the program %d", d, procs, pid, prog)
		}
	}

	// Environment (of the program, guest-init's child).
	environ := procEnviron(t, prog)
	for _, kv := range []string{"CORRIDOR_TASK=" + g.Task, "CORRIDOR_CLASS=web", "PATH=" + guest.DefaultPath, "HOME=/", "CORRIDOR_DATA_DIR=" + GuestDataDir} {
		if !contains(environ, kv) {
			t.Errorf("program env lacks %s: %v", kv, environ)
		}
	}
	// Log: stdout and stderr, served by TailLog.
	waitFor(t, "program output in task.log", 5*time.Second, func() bool {
		b, _ := os.ReadFile(guest.LogPath(e.cfg.StateDir, g.Task))
		return bytes.Contains(b, []byte("hello from "+g.Task+"\nto stderr\n"))
	})
	var tail bytes.Buffer
	if err := guest.TailLog(e.cfg.StateDir, g.Task, 2, false, &tail); err != nil || tail.String() != "hello from "+g.Task+"\nto stderr\n" {
		t.Errorf("TailLog = %q, %v", tail.String(), err)
	}
	if !strings.HasPrefix(readTrim(t, guest.LogPath(e.cfg.StateDir, g.Task)), time.Now().UTC().Format("2006-")) {
		t.Error("task.log does not start with the agent's start line")
	}

	// Idempotent: same program, nothing recreated.
	e.ensure(g)
	if got := e.runningPID(e.r, g.Task); got != pid {
		t.Errorf("second Ensure changed the PID %d -> %d", pid, got)
	}
	if hl2, _ := e.hostHandle().LinkByName(g.HostIf); hl2 == nil || hl2.Attrs().Index != hl.Attrs().Index {
		t.Error("second Ensure recreated the veth")
	}

	// Repair: the host end deleted (taking the guest end along) and a
	// limit changed come back on the next Ensure, the program untouched.
	if err := e.hostHandle().LinkDel(hl); err != nil {
		t.Fatal(err)
	}
	if list, _ := e.r.List(context.Background()); len(list) != 1 || !contains(list[0].Missing, "link") {
		t.Errorf("List after deleting the veth: %+v", list)
	}
	g.Resources.Memory = 96 << 20
	e.ensure(g)
	checkHostRoute(t, e, g, true)
	if _, err := gh.LinkByName("eth0"); err != nil {
		t.Errorf("guest eth0 not recreated: %v", err)
	}
	if !e.r.cgroups.Unified() {
		if m := readTrim(t, filepath.Join(cg.Dir("memory"), "memory.limit_in_bytes")); m != strconv.Itoa(96<<20) {
			t.Errorf("memory limit not updated: %s", m)
		}
	}
	if got := e.runningPID(e.r, g.Task); got != pid {
		t.Errorf("repair restarted the program: %d -> %d", pid, got)
	}

	// Remove: everything gone.
	if err := e.r.Remove(context.Background(), g.Task); err != nil {
		t.Fatal(err)
	}
	checkGone(t, e, g, pid)
	// And again: idempotent.
	if err := e.r.Remove(context.Background(), g.Task); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if st := e.r.Status(g.Task); st.State != api.TaskPending {
		t.Errorf("status after remove = %+v", st)
	}
}

func checkHostRoute(t *testing.T, e *env, g compile.Guest, want bool) {
	t.Helper()
	routes, err := e.hostHandle().RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Dst: guest.PrefixIPNet(netip.PrefixFrom(g.Address, 32))}, netlink.RT_FILTER_DST)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range routes {
		l, err := e.hostHandle().LinkByIndex(r.LinkIndex)
		if err == nil && l.Attrs().Name == g.HostIf && r.Scope == netlink.SCOPE_LINK {
			found = true
		}
	}
	if found != want {
		t.Errorf("host route %s dev %s: present %v, want %v (routes %v)", g.Address, g.HostIf, found, want, routes)
	}
}

func checkGone(t *testing.T, e *env, g compile.Guest, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		if !gone(pid) {
			t.Errorf("process %d still runs", pid)
		}
	}
	if _, err := os.Lstat(guest.NetnsPath(g.Task)); !os.IsNotExist(err) {
		t.Errorf("netns file still there: %v", err)
	}
	if _, err := e.hostHandle().LinkByName(g.HostIf); err == nil {
		t.Errorf("host veth %s still there", g.HostIf)
	}
	for _, d := range e.r.cgroup(g.Task).Dirs() {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup %s still there", d)
		}
	}
	if _, err := os.Stat(guest.TaskDir(e.cfg.StateDir, g.Task)); !os.IsNotExist(err) {
		t.Errorf("state dir still there")
	}
	checkHostRoute(t, e, g, false)
}

func TestGuestToGuest(t *testing.T) {
	e := newEnv(t, nil)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	a := e.guest("front", "sleep", "1000")
	b := e.guest("back", self)
	b.Env[helperEnv] = "http"
	e.ensure(a)
	e.ensure(b)
	e.runningPID(e.r, b.Task)
	if err := e.r.host.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "helper listening", 10*time.Second, func() bool {
		b, _ := os.ReadFile(guest.LogPath(e.cfg.StateDir, b.Task))
		return bytes.Contains(b, []byte("helper listening"))
	})

	// From A's netns, through the host, to B: TCP from Go...
	_, nsA := e.guestHandle(a.Task)
	var body string
	err = nsrun.DoHandle(nsA, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(b.Address, 8080).String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		resp, err := io.ReadAll(c)
		body = string(resp)
		return err
	})
	if err != nil || !strings.HasSuffix(body, b.Task) {
		t.Errorf("A -> B over TCP: %v, %q", err, body)
	}

	// ...and from a user's shell with ip netns exec.
	if _, err := exec.LookPath("curl"); err == nil {
		out, err := exec.Command("ip", "netns", "exec", guest.NetnsName(a.Task), "curl", "-s", "-m", "3",
			"http://"+b.Address.String()+":8080/").CombinedOutput()
		if err != nil || string(out) != b.Task {
			t.Errorf("ip netns exec curl: %v: %q", err, out)
		}
	}
	// The guest's source address is its overlay address (B sees A).
	err = nsrun.DoHandle(nsA, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(b.Address, 8080).String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != a.Address.String() {
			return fmt.Errorf("source %s, want %s", got, a.Address)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func TestRestartBackoff(t *testing.T) {
	e := newEnv(t, nil)
	g := e.guest("crash", "sh", "-c", "echo run; exit 3")
	start := time.Now()
	e.ensure(g)
	waitFor(t, "5 exits", 10*time.Second, func() bool { return e.r.Status(g.Task).Restarts >= 5 })
	elapsed := time.Since(start)
	// Backoff 50, 100, 200, 400 ms between the five exits: at least
	// 750 ms; a loop without backoff would take a few milliseconds.
	if elapsed < 700*time.Millisecond {
		t.Errorf("5 exits in %s: no backoff", elapsed)
	}
	st := e.r.Status(g.Task)
	if st.Runtime != spec.RuntimeNetns {
		t.Errorf("status runtime %q", st.Runtime)
	}
	time.Sleep(500 * time.Millisecond)
	st = e.r.Status(g.Task)
	runs := bytes.Count(mustRead(t, guest.LogPath(e.cfg.StateDir, g.Task)), []byte("run\n"))
	// Every exit is one restart; the program may be between a start and
	// its exit when counted.
	if runs != st.Restarts && runs != st.Restarts+1 {
		t.Errorf("%d runs in the log, %d restarts", runs, st.Restarts)
	}
	// Capped at 400 ms: over the next 6 s, about 15 more on a quiet
	// machine; not 120 (no backoff) and at most 3 if doubling went on
	// (0.8, 1.6, 3.2 s). A sealed start (guest-init builds the root
	// first) can take 0.5 s or more on a loaded machine, hence the low
	// bound of 5 and the long window.
	before := st.Restarts
	time.Sleep(6 * time.Second)
	if n := e.r.Status(g.Task).Restarts - before; n < 5 || n > 20 {
		t.Errorf("%d restarts in 6 s at a 400 ms cap", n)
	}
	st = e.r.Status(g.Task)
	// Between a start and its exit the task is starting (or, if guest-init
	// saw the program before it exited, running).
	if st.State != api.TaskFailed && st.State != api.TaskRunning && st.State != api.TaskStarting {
		t.Errorf("state %q", st.State)
	}
	if !strings.Contains(st.Message, "exited with status 3") && st.State == api.TaskFailed {
		t.Errorf("message %q", st.Message)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRemoveStopsProgram(t *testing.T) {
	// A grace period long enough that a loaded machine's slow cleanup is
	// not taken for a SIGKILL.
	e := newEnv(t, func(c *Config) { c.Grace = 3 * time.Second })
	polite := e.guest("polite", "sh", "-c", `trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done`)
	stubborn := e.guest("stubborn", "sh", "-c", `trap '' TERM; echo ready; while :; do sleep 0.05; done`)
	e.ensure(polite)
	e.ensure(stubborn)
	for _, g := range []compile.Guest{polite, stubborn} {
		waitFor(t, g.Task+" ready", 5*time.Second, func() bool {
			// "ready" on a line of its own: the agent's start line,
			// which quotes the command, says it too.
			return bytes.Contains(mustRead(t, guest.LogPath(e.cfg.StateDir, g.Task)), []byte("\nready\n"))
		})
	}
	pPolite, pStubborn := e.runningPID(e.r, polite.Task), e.runningPID(e.r, stubborn.Task)

	// Read the log before Remove deletes the state dir.
	logDone := make(chan string, 1)
	go func() {
		var buf bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		guest.TailLogContext(ctx, e.cfg.StateDir, polite.Task, -1, true, &syncWriter{&buf, logDone})
	}()
	start := time.Now()
	if err := e.r.Remove(context.Background(), polite.Task); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Errorf("polite program took %s to stop: SIGTERM not honoured", d)
	}
	select {
	case s := <-logDone:
		if !strings.Contains(s, "got-term") {
			t.Errorf("log %q lacks got-term", s)
		}
	case <-time.After(3 * time.Second):
		t.Error("got-term never logged")
	}
	checkGone(t, e, polite, pPolite)

	start = time.Now()
	if err := e.r.Remove(context.Background(), stubborn.Task); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 2900*time.Millisecond || d > 10*time.Second {
		t.Errorf("stubborn program stopped in %s, want the 3 s grace then SIGKILL", d)
	}
	checkGone(t, e, stubborn, pStubborn)
}

// syncWriter sends what it has collected once it sees got-term.
type syncWriter struct {
	b    *bytes.Buffer
	done chan string
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.b.Write(p)
	if bytes.Contains(w.b.Bytes(), []byte("got-term")) {
		select {
		case w.done <- w.b.String():
		default:
		}
	}
	return len(p), nil
}

func TestReadoption(t *testing.T) {
	e := newEnv(t, nil)
	g := e.guest("keep", "sh", "-c", `echo started; exec sleep 1000`)
	e.ensure(g)
	pid := e.runningPID(e.r, g.Task)

	// The agent goes away; the program stays.
	e.r.Close()
	time.Sleep(100 * time.Millisecond)
	if gone(pid) {
		t.Fatal("program died with its runtime")
	}
	r2 := e.newRuntime()
	e.r = r2 // cleanup removes through the new runtime

	list, err := r2.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Task != g.Task || list[0].PID != pid || len(list[0].Missing) != 0 ||
		list[0].HostIf != g.HostIf || list[0].Address != g.Address || list[0].Netns != guest.NetnsName(g.Task) {
		t.Fatalf("List after restart = %+v, want %s with pid %d", list, g.Task, pid)
	}
	if st := r2.Status(g.Task); st.State != api.TaskRunning {
		t.Errorf("status before Ensure = %+v", st)
	}
	e.ensure(g)
	if got := e.runningPID(r2, g.Task); got != pid {
		t.Fatalf("Ensure after restart: pid %d, want the adopted %d", got, pid)
	}
	// The program (started by guest-init, which the runtime's PID names)
	// writes its line when it gets to run: on a loaded machine that can
	// be after Ensure returned. Wait for it, then check it ran once.
	logPath := guest.LogPath(e.cfg.StateDir, g.Task)
	waitFor(t, "the program's first line in its log", 10*time.Second, func() bool {
		return bytes.Contains(mustRead(t, logPath), []byte("started\n"))
	})
	// guest-init and the program it started, nothing more.
	if procs := e.r.cgroup(g.Task).Procs(); len(procs) != 2 || !slices.Contains(procs, pid) || !slices.Contains(procs, programPID(t, pid)) {
		t.Errorf("cgroup holds %v, want only %d and its child", procs, pid)
	}
	if n := bytes.Count(mustRead(t, logPath), []byte("started\n")); n != 1 {
		t.Errorf("program started %d times", n)
	}

	// The adopted program dies: the new runtime notices and restarts it.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restart of the adopted program", 10*time.Second, func() bool {
		st := r2.Status(g.Task)
		return st.Restarts == 1 && st.State == api.TaskRunning
	})
	if got := e.runningPID(r2, g.Task); got == pid {
		t.Error("PID unchanged after restart")
	}
	if msg := r2.Status(g.Task).Message; msg != "" {
		t.Errorf("running with message %q", msg)
	}
}

func TestEnvChangeRestarts(t *testing.T) {
	e := newEnv(t, nil)
	g := e.guest("cfg", "sh", "-c", `echo "peers=$CORRIDOR_PEERS_DB"; exec sleep 1000`)
	g.Env["CORRIDOR_PEERS_DB"] = "100.64.0.5"
	e.ensure(g)
	pid1 := e.runningPID(e.r, g.Task)

	g2 := g
	g2.Env = map[string]string{}
	for k, v := range g.Env {
		g2.Env[k] = v
	}
	g2.Env["CORRIDOR_PEERS_DB"] = "100.64.0.5,100.64.0.6"
	e.ensure(g2)
	var pid2 int
	waitFor(t, "restart with the new env", 10*time.Second, func() bool {
		pid2 = func() int { tk, _ := e.r.tasks.Get(g.Task); return tk.sup.PID() }()
		return pid2 > 0 && pid2 != pid1
	})
	if !gone(pid1) {
		t.Error("old program still runs")
	}
	// guest-init's child has guest-init's environment until it has
	// exec'd the program: wait for the program's own.
	var env []string
	waitFor(t, "the new program's environment", 5*time.Second, func() bool {
		env = procEnviron(t, programPID(t, pid2))
		return contains(env, "CORRIDOR_PEERS_DB=100.64.0.5,100.64.0.6")
	})
	waitFor(t, "new env in the log", 5*time.Second, func() bool {
		return bytes.Contains(mustRead(t, guest.LogPath(e.cfg.StateDir, g.Task)), []byte("peers=100.64.0.5,100.64.0.6\n"))
	})
	// Running once the readiness poll has seen the new program.
	waitFor(t, "the new program running", 5*time.Second, func() bool { return e.r.Status(g.Task).State == api.TaskRunning })
	if st := e.r.Status(g.Task); st.Restarts != 0 {
		t.Errorf("a wanted restart counted as a crash: %+v", st)
	}
	// The same env again: no restart.
	e.ensure(g2)
	time.Sleep(200 * time.Millisecond)
	if got := e.runningPID(e.r, g.Task); got != pid2 {
		t.Errorf("unchanged Ensure restarted the program: %d -> %d", pid2, got)
	}
}

// TestCorridorBinary: a command named "corridor" runs Config.Binary.
func TestCorridorBinary(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Binary = "/bin/echo" })
	g := e.guest("self", "corridor", "agent-says-hi")
	e.ensure(g)
	waitFor(t, "echo output", 5*time.Second, func() bool {
		return bytes.Contains(mustRead(t, guest.LogPath(e.cfg.StateDir, g.Task)), []byte("agent-says-hi\n"))
	})
	// A missing program is an Ensure error, and Status says why.
	bad := e.guest("bad", "no-such-program-here")
	err := e.r.Ensure(context.Background(), bad)
	if err == nil || !strings.Contains(err.Error(), "not found in PATH") {
		t.Errorf("Ensure with a missing program: %v", err)
	}
	if st := e.r.Status(bad.Task); st.State != api.TaskFailed || !strings.Contains(st.Message, "not found") {
		t.Errorf("status = %+v", st)
	}
}

// BenchmarkEnsureRemove measures a guest's life: netns, veth, addresses,
// routes, cgroup and program up (Ensure returns once the program runs),
// then all of it torn down.
func BenchmarkEnsureRemove(b *testing.B) {
	e := newEnv(b, nil)
	ctx := context.Background()
	g := e.guest("bench", "sleep", "1000")
	b.ResetTimer()
	for range b.N {
		if err := e.r.Ensure(ctx, g); err != nil {
			b.Fatal(err)
		}
		if err := e.r.Remove(ctx, g.Task); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRemoveOfOtherTaskDoesNotWait: one guest's removal, waiting out
// the grace of a program that ignores SIGTERM, does not hold up another
// guest's (the agent removes an app's guests several at once).
func TestRemoveOfOtherTaskDoesNotWait(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Grace = 10 * time.Second })
	slow := e.guest("slow", "sh", "-c", `trap 'echo got-term' TERM; echo ready; while :; do sleep 0.05; done`)
	quick := e.guest("quick", "sh", "-c", `echo ready; while :; do sleep 0.05; done`)
	e.ensure(slow)
	e.ensure(quick)
	for _, g := range []compile.Guest{slow, quick} {
		waitFor(t, g.Task+" ready", 5*time.Second, func() bool {
			return bytes.Contains(mustRead(t, guest.LogPath(e.cfg.StateDir, g.Task)), []byte("\nready\n"))
		})
	}
	slowGone := make(chan error, 1)
	go func() { slowGone <- e.r.Remove(context.Background(), slow.Task) }()
	// The slow removal is under way (its program got SIGTERM) before the
	// quick one starts.
	waitFor(t, "SIGTERM to the slow program", 5*time.Second, func() bool {
		b, err := os.ReadFile(guest.LogPath(e.cfg.StateDir, slow.Task))
		return err == nil && bytes.Contains(b, []byte("\ngot-term\n"))
	})
	if err := e.r.Remove(context.Background(), quick.Task); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-slowGone:
		t.Fatalf("the quick guest's removal waited for the slow one's grace (slow: %v)", err)
	default:
	}
	checkGone(t, e, quick)
	if err := <-slowGone; err != nil {
		t.Fatal(err)
	}
	checkGone(t, e, slow)
}
