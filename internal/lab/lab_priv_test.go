package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/corridor-dev/corridor/internal/hostns"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/settle"
	"github.com/corridor-dev/corridor/internal/testnet"
)

func TestMain(m *testing.M) { os.Exit(testnet.Main(m)) }

// corridorBinary is testnet.Binary, kept for the tests that still call it.
func corridorBinary(t *testing.T) string { return testnet.Binary(t) }

func needRoot(t *testing.T) {
	t.Helper()
	testnet.NeedRoot(t, "makes network namespaces and links")
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skip("no network namespaces on this kernel")
	}
}

// testPrefix and testUnderlay keep each privileged test apart from a
// user's lab and from the other tests: prefix "cort<pid><k>-", subnet
// 198.18.(pid%200+20+k).0/24.
func testPrefix(k int) string {
	return fmt.Sprintf("cort%d%c-", os.Getpid()%100000, 'a'+k)
}

func testUnderlay(k int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(os.Getpid()%200 + 20 + k), 0}), 24)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// fakeCorridor is a stand-in for the corridor binary: "server" and
// "agent" sleep; "agent --cleanup" writes the inode of the namespace it
// runs in to $LAB_TEST_MARK, so that the test sees it ran in the right one.
const fakeCorridor = `#!/bin/sh
case "$*" in
*--cleanup*) stat -L -c %i /proc/self/ns/net >> "$LAB_TEST_MARK"; exit 0;;
*) exec sleep 300;;
esac
`

func startSleep(t *testing.T, namespace string) *Process {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := startIn(namespace, cmd); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	info, err := readProc("/proc", cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	p := &Process{PID: info.PID, StartTime: info.StartTime, Args: info.Args}
	t.Cleanup(func() { _, _ = terminate(p.PID, p.StartTime, time.Second) })
	return p
}

// prefixLeftovers lists namespaces and root links named after prefix.
func prefixLeftovers(prefix string, also ...string) []string {
	var out []string
	for _, ns := range listNamespaces() {
		if strings.HasPrefix(ns, prefix) || contains(also, ns) {
			out = append(out, "namespace "+ns)
		}
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, base(prefix)) {
			out = append(out, "link "+l.Attrs().Name)
		}
	}
	return out
}

func cleanupPrefix(t *testing.T, prefix, dir string) {
	t.Cleanup(func() {
		if left := prefixLeftovers(prefix); len(left) > 0 {
			t.Logf("removing leftovers %v", left)
			_ = Down(context.Background(), DownOptions{Dir: dir, Prefix: prefix, Grace: time.Second})
		}
	})
}

// testLab gives privileged test k its own prefix and underlay (testPrefix,
// testUnderlay) and a lab directory, and removes what is left under the
// prefix when the test ends (cleanupPrefix).
func testLab(t *testing.T, k int) (prefix string, underlay netip.Prefix, dir string) {
	t.Helper()
	prefix, underlay = testPrefix(k), testUnderlay(k)
	dir = filepath.Join(t.TempDir(), "lab")
	cleanupPrefix(t, prefix, dir)
	return prefix, underlay, dir
}

// checkDown reports, after a lab down, each of procs that still runs and
// the lab directory dir if it is left.
func checkDown(t *testing.T, procs []Process, dir string) {
	t.Helper()
	for _, p := range procs {
		if alive(&p) {
			t.Errorf("process %d (%s) still runs", p.PID, p.Name)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab dir: %v, want it removed", err)
	}
}

// TestNetworkAndDown makes the lab's network with stand-in processes
// (sleep instead of server and agents), checks that it carries traffic,
// adds the things an agent leaves behind (a named and an unnamed guest
// namespace linked to a server, a process in a server namespace the lab
// never recorded), and checks that Down removes all of it, and only it.
func TestNetworkAndDown(t *testing.T) {
	needRoot(t)
	prefix, underlay, dir := testLab(t, 0)
	bin := filepath.Join(t.TempDir(), "corridor")
	if err := os.WriteFile(bin, []byte(fakeCorridor), 0o755); err != nil {
		t.Fatal(err)
	}
	mark := filepath.Join(t.TempDir(), "cleanups")
	t.Setenv("LAB_TEST_MARK", mark)

	o, err := Options{Dir: dir, Servers: 2, Prefix: prefix, Underlay: underlay, MTU: 1400, Binary: bin, Logger: testLogger(t)}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkConflicts(o); err != nil {
		t.Fatal(err)
	}
	l := newLab(o)
	for _, d := range []string{l.Dir, filepath.Join(l.Dir, "logs"), l.ServerDataDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.makeUnderlay(); err != nil {
		t.Fatal(err)
	}
	for i := range l.Servers {
		if err := l.makeServer(&l.Servers[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.makeRootLink(); err != nil {
		t.Fatal(err)
	}

	// The network: MTU, forwarding, and traffic root <-> s1 <-> s2.
	s1, s2 := &l.Servers[0], &l.Servers[1]
	if err := hostns.Do(s1.Namespace, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if link.Attrs().MTU != 1400 {
			return fmt.Errorf("eth0 MTU %d, want 1400", link.Attrs().MTU)
		}
		b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) != "1" {
			return fmt.Errorf("ip_forward %q in %s", b, s1.Namespace)
		}
		// A default route through the underlay, as a real server has
		// (a leak leaves in plain there instead of dying unseen).
		rs, err := netlink.RouteGet(net.ParseIP("100.64.77.7"))
		if err != nil {
			return fmt.Errorf("no default route in %s: %w", s1.Namespace, err)
		}
		if len(rs) != 1 || !rs[0].Gw.Equal(gatewayAddr(l.Underlay).AsSlice()) || rs[0].LinkIndex != link.Attrs().Index {
			return fmt.Errorf("route to 100.64.77.7 in %s: %v, want via %s dev eth0", s1.Namespace, rs, gatewayAddr(l.Underlay))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rootLn, err := net.Listen("tcp", net.JoinHostPort(l.RootAddress.String(), "0"))
	if err != nil {
		t.Fatalf("listen on the root link: %v", err)
	}
	defer rootLn.Close()
	go acceptAll(rootLn)
	var s2Ln net.Listener
	if err := hostns.Do(s2.Namespace, func() error {
		var err error
		s2Ln, err = net.Listen("tcp", net.JoinHostPort(s2.Address.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer s2Ln.Close()
	go acceptAll(s2Ln)
	if err := hostns.Do(s1.Namespace, func() error {
		for _, addr := range []string{rootLn.Addr().String(), s2Ln.Addr().String()} {
			c, err := net.DialTimeout("tcp", addr, 3*time.Second)
			if err != nil {
				return fmt.Errorf("from s1 to %s: %w", addr, err)
			}
			c.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Processes: control and agents as Up records them.
	l.Control, err = spawn(RoleServer, "server", "", l.controlLog(), l.controlArgs())
	if err != nil {
		t.Fatal(err)
	}
	for i := range l.Servers {
		if err := l.startAgent(&l.Servers[i], o); err != nil {
			t.Fatal(err)
		}
	}
	agent1, control := *s1.Agent, *l.Control
	// s2's record points at a PID reused by an unrelated process (same
	// PID, other start time): it must survive; s2's real agent is found
	// by its namespace instead.
	agent2 := *s2.Agent
	decoy := startSleep(t, "")
	s2.Agent = &Process{Role: RoleAgent, Name: "s2", PID: decoy.PID, StartTime: decoy.StartTime + 1}
	stray := startSleep(t, s2.Namespace)

	// Guests an agent would leave: a named namespace and an unnamed one,
	// each with a veth to s1 and a task process.
	guestNS := fmt.Sprintf("cortst-lab-%d-g", os.Getpid())
	unnamedNS := fmt.Sprintf("cortst-lab-%d-u", os.Getpid())
	t.Cleanup(func() { _ = hostns.Delete(guestNS); _ = hostns.Delete(unnamedNS) })
	for i, g := range []string{guestNS, unnamedNS} {
		if err := hostns.Create(g); err != nil {
			t.Fatal(err)
		}
		sh, err := openNamespace(s1.Namespace)
		if err != nil {
			t.Fatal(err)
		}
		gh, err := openNamespace(g)
		if err != nil {
			t.Fatal(err)
		}
		if err := makeVeth(sh, "corg"+strconv.Itoa(i), "", gh, "eth0", 1400); err != nil {
			t.Fatal(err)
		}
		sh.Close()
		gh.Close()
	}
	// A third one the agent recorded in its state directory, no longer
	// linked to anything (its veth already removed).
	recordedNS := fmt.Sprintf("cortst-lab-%d-r", os.Getpid())
	t.Cleanup(func() { _ = hostns.Delete(recordedNS) })
	if err := hostns.Create(recordedNS); err != nil {
		t.Fatal(err)
	}
	recDir := guest.TaskDir(agent.GuestsDir(s2.StateDir), "shop/web/0")
	if err := os.MkdirAll(recDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(recDir, guest.RecordFile), []byte(`{"task":"shop/web/0","netns":"`+recordedNS+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	guestTask := startSleep(t, guestNS)
	unnamedTask := startSleep(t, unnamedNS)
	if err := hostns.Delete(unnamedNS); err != nil { // now held only by its task
		t.Fatal(err)
	}
	if err := l.save(); err != nil {
		t.Fatal(err)
	}

	// A lab is up in dir: Up refuses it.
	if _, err := Up(context.Background(), Options{Dir: dir, Servers: 2, Prefix: testPrefix(1), Underlay: testUnderlay(1), Binary: bin}); !errors.Is(err, ErrExists) {
		t.Fatalf("Up over a live lab: %v, want ErrExists", err)
	}

	st := l.Status(context.Background())
	if !st.Underlay.Present || !st.RootLink || !st.ControlAlive || st.ControlReady || !st.Servers[0].AgentAlive || st.Servers[1].AgentAlive {
		t.Errorf("status before down: %+v", st)
	}

	if err := Down(context.Background(), DownOptions{Dir: dir, Grace: 2 * time.Second, Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}

	if left := prefixLeftovers(prefix, guestNS, recordedNS); len(left) > 0 {
		t.Errorf("left after down: %v", left)
	}
	for name, p := range map[string]Process{"agent s1": agent1, "agent s2": agent2, "control": control, "stray": *stray, "guest task": *guestTask, "unnamed guest task": *unnamedTask} {
		if !gone(p.PID, p.StartTime) {
			t.Errorf("%s (pid %d) still runs", name, p.PID)
		}
	}
	if gone(decoy.PID, decoy.StartTime) {
		t.Errorf("the process that reused a recorded PID was killed")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab dir: %v, want it removed", err)
	}
	// Each agent's cleanup ran inside its own server namespace.
	b, err := os.ReadFile(mark)
	if err != nil {
		t.Fatalf("no agent cleanup ran: %v", err)
	}
	got := strings.Fields(string(b))
	if len(got) != 2 {
		t.Fatalf("cleanups ran in namespaces %v, want 2", got)
	}
	self, err := ownNamespaceInode()
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range got {
		if ino == strconv.FormatUint(self, 10) {
			t.Errorf("an agent cleanup ran in the root namespace")
		}
	}
	if got[0] == got[1] {
		t.Errorf("both cleanups ran in one namespace %s", got[0])
	}

	// Twice is fine.
	if err := Down(context.Background(), DownOptions{Dir: dir, Logger: testLogger(t)}); err != nil {
		t.Errorf("second down: %v", err)
	}
}

func acceptAll(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// TestDownWithoutRecord removes a lab whose lab.json is gone, by prefix,
// and leaves alone a directory that holds other files.
func TestDownWithoutRecord(t *testing.T) {
	needRoot(t)
	prefix := testPrefix(2)
	dir := t.TempDir()
	cleanupPrefix(t, prefix, dir)
	for _, ns := range []string{underlayNamespace(prefix), serverNamespace(prefix, 1)} {
		if err := hostns.Create(ns); err != nil {
			t.Fatal(err)
		}
	}
	ul, err := openNamespace(underlayNamespace(prefix))
	if err != nil {
		t.Fatal(err)
	}
	root, err := openNamespace("")
	if err != nil {
		t.Fatal(err)
	}
	if err := makeBridge(ul, bridgeName, 1500); err != nil {
		t.Fatal(err)
	}
	if err := makeVeth(ul, rootPeerName, bridgeName, root, rootLink(prefix), 1500); err != nil {
		t.Fatal(err)
	}
	ul.Close()
	root.Close()
	task := startSleep(t, serverNamespace(prefix, 1))
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "s1"), 0o700); err != nil {
		t.Fatal(err)
	}

	if err := Down(context.Background(), DownOptions{Dir: dir, Prefix: prefix, Grace: time.Second, Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	if left := prefixLeftovers(prefix); len(left) > 0 {
		t.Errorf("left after down: %v", left)
	}
	if !gone(task.PID, task.StartTime) {
		t.Error("the process in the server namespace still runs")
	}
	if _, err := os.Stat(filepath.Join(dir, "notes.txt")); err != nil {
		t.Errorf("a file that is not the lab's was removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "s1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the server state dir was kept: %v", err)
	}
}

// TestCrashedUpIsCleaned kills `corridor lab up` in the middle (while it
// makes namespaces, and once it has started processes or failed), then
// runs `corridor lab down` and checks that nothing is left.
func TestCrashedUpIsCleaned(t *testing.T) {
	needRoot(t)
	bin := testnet.Binary(t)
	for k, c := range []struct {
		name string
		when func(*Lab) bool
	}{
		{"making namespaces", func(l *Lab) bool { return len(l.Namespaces) >= 2 }},
		{"processes started", func(l *Lab) bool { return l.Control != nil && l.Servers[0].Agent != nil }},
	} {
		t.Run(c.name, func(t *testing.T) {
			prefix, underlay, dir := testLab(t, 3+k)

			up := exec.Command(bin, "lab", "up", "--dir", dir, "--prefix", prefix, "--underlay", underlay.String(), "--servers", "3", "--join-timeout", "20s")
			var stderr bytes.Buffer
			up.Stderr = &stderr
			if err := up.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- up.Wait() }()
			deadline := time.Now().Add(30 * time.Second)
		wait:
			for {
				if l, err := Load(dir); err == nil && c.when(l) {
					_ = up.Process.Kill()
					<-done
					break
				}
				select {
				case err := <-done:
					// Up failed by itself before the kill point (a
					// broken server or agent): a half-made lab all the
					// same, which down must remove.
					t.Logf("lab up ended by itself (%v):\n%s", err, stderr.String())
					break wait
				case <-time.After(5 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					_ = up.Process.Kill()
					<-done
					t.Fatalf("lab up did not reach %q within 30s; its stderr:\n%s", c.name, stderr.String())
				}
			}
			l, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("lab up stopped at phase %q with namespaces %v, control %v", l.Phase, l.Namespaces, l.Control != nil)

			var downErr bytes.Buffer
			down := exec.Command(bin, "lab", "down", "--dir", dir)
			down.Stderr = &downErr
			if err := down.Run(); err != nil {
				t.Fatalf("lab down: %v\n%s", err, downErr.String())
			}
			if left := prefixLeftovers(prefix); len(left) > 0 {
				t.Errorf("left after down: %v\n%s", left, downErr.String())
			}
			checkDown(t, l.processes(), dir)
		})
	}
}

// TestUpJoinDown is the whole lab: a real server and two real agents,
// made by the CLI, remade with --force through the Go API, removed by Down.
func TestUpJoinDown(t *testing.T) {
	needRoot(t)
	bin := testnet.Binary(t, "server", "agent")
	prefix, underlay, dir := testLab(t, 5)
	ctx := context.Background()
	fail := func(format string, args ...any) {
		t.Helper()
		_ = Down(ctx, DownOptions{Dir: dir, Grace: time.Second, KeepLogs: false, Logger: testLogger(t)})
		t.Fatalf(format, args...)
	}

	var stdout, stderr bytes.Buffer
	up := exec.Command(bin, "lab", "up", "--dir", dir, "--prefix", prefix, "--underlay", underlay.String(), "--servers", "2", "--join-timeout", "60s", "-o", "json")
	up.Stdout, up.Stderr = &stdout, &stderr
	if err := up.Run(); err != nil {
		fail("lab up: %v\n%s", err, stderr.String())
	}
	var access struct {
		ServerURL, Token, CAFile string
		Servers                  []string
	}
	if err := json.Unmarshal(stdout.Bytes(), &access); err != nil {
		fail("lab up -o json printed %q: %v", stdout.String(), err)
	}
	l, err := Load(dir)
	if err != nil {
		fail("%v", err)
	}
	tok, err := l.AdminToken()
	if err != nil || access.Token != tok || access.ServerURL != l.ServerURL || access.CAFile != l.CAFile || len(access.Servers) != 2 {
		fail("lab up printed %+v; recorded %s %s, token %q (%v)", access, l.ServerURL, l.CAFile, tok, err)
	}
	if l.Phase != PhaseUp {
		t.Errorf("recorded phase %q", l.Phase)
	}
	if st := l.Status(ctx); !st.Up() {
		b, _ := json.MarshalIndent(st, "", "  ")
		t.Errorf("status after up:\n%s", b)
	}
	if out, err := exec.Command(bin, "lab", "status", "--dir", dir).CombinedOutput(); err != nil {
		t.Errorf("lab status: %v\n%s", err, out)
	}
	first := l.processes()

	// Again over the live lab: refused, then remade with Force.
	opts := Options{Dir: dir, Servers: 2, Prefix: prefix, Underlay: underlay, Binary: bin, Logger: testLogger(t), JoinTimeout: 60 * time.Second}
	if _, err := Up(ctx, opts); !errors.Is(err, ErrExists) {
		fail("Up over a live lab: %v, want ErrExists", err)
	}
	opts.Force = true
	l, err = Up(ctx, opts)
	if err != nil {
		fail("Up --force: %v", err)
	}
	for _, p := range first {
		if alive(&p) {
			t.Errorf("process %d (%s) of the first lab survived --force", p.PID, p.Name)
		}
	}
	if st := l.Status(ctx); !st.Up() {
		b, _ := json.MarshalIndent(st, "", "  ")
		t.Errorf("status after up --force:\n%s", b)
	}
	env, err := l.Env()
	if err != nil || len(env) != 3 || env[1] == "CORRIDOR_TOKEN=" {
		t.Errorf("env %v: %v", env, err)
	}
	procs := l.processes()
	// Every process in a lab namespace (agents, and what they started:
	// wireguard-go datapath processes, tasks) must be gone after Down.
	obs := observe(l)
	inLab := map[uint64]bool{}
	for _, ino := range obs.Namespaces {
		inLab[ino] = true
	}
	for _, info := range obs.Procs {
		if inLab[info.NetNS] {
			procs = append(procs, Process{Name: strings.Join(info.Args, " "), PID: info.PID, StartTime: info.StartTime})
		}
	}

	if err := Down(ctx, DownOptions{Dir: dir, Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	if left := prefixLeftovers(prefix); len(left) > 0 {
		t.Errorf("left after down: %v", left)
	}
	for _, s := range l.Servers {
		if _, err := os.Stat(filepath.Join(wireGuardSocketDir, s.WireGuardName+".sock")); err == nil {
			t.Errorf("WireGuard socket of %s left", s.Name)
		}
	}
	checkDown(t, procs, dir)
}

// TestDownAfterAgentsDie runs real guests on a real lab, then kills the
// agents and takes away the binary, so that no agent cleanup can run: Down
// must still end the tasks and the wireguard-go processes, delete the
// guests' namespaces and cgroups, and remove the sockets.
func TestDownAfterAgentsDie(t *testing.T) {
	needRoot(t)
	bin := testnet.Binary(t, "server", "agent")
	prefix, underlay, dir := testLab(t, 6)
	ctx := context.Background()
	l, err := Up(ctx, Options{Dir: dir, Servers: 2, Prefix: prefix, Underlay: underlay, Binary: bin, Logger: testLogger(t), JoinTimeout: 60 * time.Second})
	if err != nil {
		if l != nil {
			_ = Down(ctx, DownOptions{Dir: dir, Grace: time.Second})
		}
		t.Fatal(err)
	}
	app := fmt.Sprintf("labt%d", os.Getpid())
	t.Cleanup(func() {
		for _, ns := range listNamespaces() {
			if isLabGuest(ns, prefix, app) {
				_ = hostns.Delete(ns)
			}
		}
	})
	doc := fmt.Sprintf(`apiVersion: corridor/v1
kind: App
name: %s
classes:
  - name: a
    tasks: 2
    guest:
      runtime: netns
      command: [sleep, "1000"]
    resources:
      cpu: 50m
      memory: 16Mi
`, app)
	c, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ApplyApp(ctx, []byte(doc)); err != nil {
		_ = Down(ctx, DownOptions{Dir: dir, Grace: time.Second})
		t.Fatalf("apply: %v", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	_, err = settle.Wait(wctx, c, settle.Options{Apps: []string{app}})
	wcancel()
	if err != nil {
		_ = Down(ctx, DownOptions{Dir: dir, Grace: time.Second})
		t.Fatalf("the app did not settle: %v", err)
	}
	var guests []string
	for _, ns := range listNamespaces() {
		if isLabGuest(ns, prefix, app) {
			guests = append(guests, ns)
		}
	}
	if len(guests) != 2 {
		_ = Down(ctx, DownOptions{Dir: dir, Grace: time.Second})
		t.Fatalf("guest namespaces %v, want 2", guests)
	}

	// Everything in the lab's and the guests' namespaces, as it is now.
	obs := observe(l)
	inLab := map[uint64]bool{}
	for _, ino := range obs.Namespaces {
		inLab[ino] = true
	}
	for _, g := range guests {
		ino, err := hostns.Inode(g)
		if err != nil {
			t.Fatal(err)
		}
		inLab[ino] = true
	}
	var procs []procInfo
	tasks := 0
	for _, info := range obs.Procs {
		if inLab[info.NetNS] {
			procs = append(procs, info)
			if len(info.Args) > 0 && info.Args[0] == "sleep" {
				tasks++
			}
		}
	}
	if tasks != 2 {
		t.Errorf("%d task processes in guest namespaces, want 2", tasks)
	}

	// The agents die, and the binary is no longer where lab.json says.
	for _, s := range l.Servers {
		_, _ = terminate(s.Agent.PID, s.Agent.StartTime, 0)
	}
	l.Binary = filepath.Join(t.TempDir(), "gone", "corridor")
	if err := l.save(); err != nil {
		t.Fatal(err)
	}
	if err := Down(ctx, DownOptions{Dir: dir, Grace: 2 * time.Second, Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	if left := prefixLeftovers(prefix, guests...); len(left) > 0 {
		t.Errorf("left after down: %v", left)
	}
	for _, p := range procs {
		if !gone(p.PID, p.StartTime) {
			t.Errorf("process %d (%s) still runs", p.PID, strings.Join(p.Args, " "))
		}
	}
	for _, s := range l.Servers {
		if _, err := os.Stat(filepath.Join(wireGuardSocketDir, s.WireGuardName+".sock")); err == nil {
			t.Errorf("WireGuard socket of %s left", s.Name)
		}
	}
	for _, m := range cgroupMounts() {
		for _, g := range guests {
			d := filepath.Join(m, guest.CgroupRel(guest.DefaultCgroupParent, strings.TrimPrefix(g, guest.NetnsPrefix)))
			if _, err := os.Stat(d); err == nil {
				t.Errorf("cgroup %s left", d)
			}
		}
	}
}
