package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/dataplane"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/probe"
	"github.com/corridor-dev/corridor/internal/settle"
	"github.com/corridor-dev/corridor/internal/testnet"
	"github.com/corridor-dev/corridor/internal/verify"
)

func TestMain(m *testing.M) { os.Exit(testnet.Main(m)) }

// blog is a second app on the same fleet, to prove isolation.
const blog = `apiVersion: corridor/v1
kind: App
name: blog
classes:
  - name: www
    tasks: 2
    guest:
      runtime: netns
      command: [corridor, sample, db, --listen, ":80"]
    resources: {cpu: 100m, memory: 64Mi}
    ports: [{port: 80}]
`

type fleet struct {
	lab *lab.Lab
	c   *api.Client
	// own are the apps applied (apply, applyOwn), whose guests
	// assertNothingLeft looks for.
	own []string
}

func upFleet(t *testing.T) *fleet {
	t.Helper()
	return upFleetWith(t)
}

// upFleetWith brings up a 3-server lab whose agents get extra arguments.
func upFleetWith(t testing.TB, agentArgs ...string) *fleet {
	t.Helper()
	return upFleetOpts(t, func(o *lab.Options) { o.AgentArgs = append(o.AgentArgs, agentArgs...) })
}

// upFleetOpts brings up a 3-server lab with options changed by edit.
func upFleetOpts(t testing.TB, edit func(*lab.Options)) *fleet {
	t.Helper()
	testnet.NeedRoot(t, "builds a lab of network namespaces")
	corridorBin := testnet.Binary(t, "server", "agent")
	pid := os.Getpid()
	opts := lab.Options{
		Dir:      filepath.Join(t.TempDir(), "lab"),
		Servers:  3,
		Prefix:   fmt.Sprintf("corte%d-", pid%1000),
		Underlay: netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", 100+pid%150)),
		Binary:   corridorBin,
		// Drift repair fast enough for the test to watch it.
		AgentArgs: []string{"--repair-interval", "20s"},
	}
	edit(&opts)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, opts)
	f := &fleet{lab: l}
	t.Cleanup(func() {
		if l == nil {
			return
		}
		if t.Failed() {
			dumpLogs(t, l)
		}
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer dcancel()
		if err := lab.Down(dctx, lab.DownOptions{Dir: l.Dir, Binary: corridorBin}); err != nil {
			t.Errorf("lab down: %v", err)
		}
		assertNothingLeft(t, l, f.own...)
	})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	if f.c, err = l.Client(); err != nil {
		t.Fatal(err)
	}
	return f
}

func dumpLogs(t testing.TB, l *lab.Lab) {
	files, _ := filepath.Glob(filepath.Join(l.Dir, "logs", "*.log"))
	more, _ := filepath.Glob(filepath.Join(l.Dir, "*", "cor*.log"))
	files = append(files, more...)
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		t.Logf("---- %s (tail)\n%s", f, b)
	}
	// The WireGuard view of each server: peers, endpoints, handshakes.
	for _, s := range l.Servers {
		out, err := exec.Command("ip", "netns", "exec", s.Namespace, "wg", "show", s.WireGuardName, "dump").CombinedOutput()
		t.Logf("---- wg show %s dump on %s (at %d, err %v)\n%s", s.WireGuardName, s.Name, time.Now().Unix(), err, out)
	}
}

// assertNothingLeft checks that lab down removed every namespace, link,
// process and file of the lab; apps are the apps the test applied. (Only
// those: another lab on the machine may run a shop of its own.)
func assertNothingLeft(t testing.TB, l *lab.Lab, apps ...string) {
	t.Helper()
	// The lab's guests are cor-<prefix>sN.<app>-...; unscoped names of
	// the apps too, in case an agent made one.
	prefixes := []string{l.Prefix, guest.NetnsPrefix + l.Prefix}
	for _, a := range apps {
		prefixes = append(prefixes, guest.NetnsPrefix+a+"-")
	}
	for _, n := range hostns.List() {
		for _, p := range prefixes {
			if strings.HasPrefix(n, p) {
				t.Errorf("namespace %s left behind", n)
				break
			}
		}
	}
	if _, err := netlink.LinkByName(l.RootLink); err == nil {
		t.Errorf("root link %s left behind", l.RootLink)
	}
	if _, err := os.Stat(l.Dir); err == nil {
		t.Errorf("lab directory %s left behind", l.Dir)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(l.Dir)) {
			t.Errorf("process %s left behind: %s", p, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	for _, s := range l.Servers {
		for _, n := range []string{s.WireGuardName, dataplane.SpareName(s.WireGuardName)} {
			if _, err := os.Stat(dataplane.UAPISocket(n)); err == nil {
				t.Errorf("WireGuard socket %s of %s left behind", n, s.Name)
			}
		}
	}
}

// appNameLine is the app's name line in a spec document.
var appNameLine = regexp.MustCompile(`(?m)^name: *([a-z][a-z0-9]*) *$`)

// applyOwn applies doc under an app name of this test process's own (its
// name followed by the PID) and returns that name. Guests' machine-wide
// names carry their agent's scope (guest.ScopedName; the lab's is the
// server's namespace), so another lab running an app of the same name no
// longer shares them (TestTwoLabsRunOneApp); an agent before scopes on the
// machine (another branch's test run, the try-* hosts of
// docs/operations.md started with an old binary) still would: it SIGKILLs
// what it finds in the task's cgroup and re-makes the guest's veth. Tests
// that watch one stream keep their own app names for that.
func (f *fleet) applyOwn(t testing.TB, doc []byte) string {
	t.Helper()
	m := appNameLine.FindSubmatchIndex(doc)
	if m == nil {
		t.Fatalf("no app name line (%s) in the spec", appNameLine)
	}
	name := fmt.Sprintf("%s%d", doc[m[2]:m[3]], os.Getpid())
	own := append(append(append([]byte{}, doc[:m[2]]...), name...), doc[m[3]:]...)
	f.apply(t, own)
	return name
}

func (f *fleet) apply(t testing.TB, doc []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := f.c.ApplyApp(ctx, doc, api.ApplyOptions{File: "e2e.yaml"}); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if m := appNameLine.FindSubmatch(doc); m != nil && !slices.Contains(f.own, string(m[1])) {
		f.own = append(f.own, string(m[1]))
	}
}

// settle waits until the fleet has settled (settle.Wait: every task the
// specs ask for runs, every host applied its latest desired state, every
// encrypted path between two servers had a handshake), then checks that
// the placement holds exactly want tasks.
func (f *fleet) settle(t testing.TB, want int) []api.TaskInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st, err := settle.Wait(ctx, f.c, settle.Options{Interval: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("fleet did not settle: %v", err)
	}
	if len(st.Tasks) != want {
		t.Fatalf("fleet settled with %d tasks placed, want %d", len(st.Tasks), want)
	}
	return st.Tasks
}

func (f *fleet) verify(t testing.TB, app string) *verify.Report {
	t.Helper()
	return f.verifyOpt(t, app, verify.Options{Timeout: 1500 * time.Millisecond})
}

func (f *fleet) verifyOpt(t testing.TB, app string, opt verify.Options) *verify.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := verify.RunFleet(ctx, f.c, app, opt)
	if err != nil {
		t.Fatalf("verify %s: %v", app, err)
	}
	return rep
}

func (f *fleet) mustVerify(t testing.TB, app string) *verify.Report {
	t.Helper()
	return f.verifyWithin(t, app, 0)
}

// verifyWithin runs verify until it passes or d has elapsed, and fails
// the test with the last run's mismatches. d = 0 runs it once.
func (f *fleet) verifyWithin(t testing.TB, app string, d time.Duration) *verify.Report {
	t.Helper()
	deadline := time.Now().Add(d)
	rep := f.verify(t, app)
	for !rep.OK() && time.Now().Before(deadline) {
		time.Sleep(time.Second)
		rep = f.verify(t, app)
	}
	if !rep.OK() {
		for _, c := range rep.Checks {
			if !c.OK {
				t.Errorf("verify %s: %s -> %s %s/%d: expected %s, observed %s (%s)", app, c.FromTask, c.ToTask, c.Protocol, c.Port, c.Expect, c.Observed, c.Detail)
			}
		}
		t.FailNow()
	}
	return rep
}

func placement(tasks []api.TaskInfo) map[string]string {
	m := map[string]string{}
	for _, t := range tasks {
		m[t.ID] = t.Server + " " + t.Address.String()
	}
	return m
}

// TestShopLifecycle is the whole method on a lab: apply, verify with real
// traffic, a second app for isolation, scale up and down, break a path by
// hand and watch verify catch it and the agent repair it, delete, lab down.
func TestShopLifecycle(t *testing.T) {
	f := upFleet(t)

	f.apply(t, examples.Shop)
	f.apply(t, []byte(blog))
	tasks := f.settle(t, 7)
	rep := f.mustVerify(t, "shop")
	kinds := map[string]int{}
	for _, c := range rep.Checks {
		kinds[c.Expect]++
	}
	if kinds[verify.Encrypted] == 0 || kinds[verify.Plain] == 0 || kinds[verify.Denied] == 0 {
		t.Fatalf("verify did not cover every kind of path: %v", kinds)
	}
	f.mustVerify(t, "blog")

	t.Run("scale", func(t *testing.T) {
		before := placement(tasks)
		ctx := context.Background()
		if _, err := f.c.Scale(ctx, "shop", "app", 3); err != nil {
			t.Fatal(err)
		}
		after := placement(f.settle(t, len(before)+1))
		for id, where := range before {
			if after[id] != where {
				t.Errorf("scale up moved %s: %s -> %s", id, where, after[id])
			}
		}
		if _, ok := after["shop/app/2"]; !ok || len(after) != len(before)+1 {
			t.Fatalf("scale up: placement %v", after)
		}
		f.mustVerify(t, "shop")

		if _, err := f.c.Scale(ctx, "shop", "app", 1); err != nil {
			t.Fatal(err)
		}
		down := placement(f.settle(t, len(before)-1))
		for id, where := range down {
			if before[id] != where {
				t.Errorf("scale down moved %s: %s -> %s", id, before[id], where)
			}
		}
		if _, ok := down["shop/app/1"]; ok || len(down) != len(before)-1 {
			t.Fatalf("scale down: placement %v", down)
		}
		f.mustVerify(t, "shop")
		tasks = f.settle(t, len(before)-1)
	})

	t.Run("drift", func(t *testing.T) { testDrift(t, f, tasks) })

	t.Run("rotate-key", func(t *testing.T) { testRotateKey(t, f, tasks) })

	t.Run("delete", func(t *testing.T) {
		gone := map[string]compile.Task{}
		for _, ti := range tasks {
			if ti.App == "shop" {
				gone[ti.ID] = ti.Task
			}
		}
		if err := f.c.DeleteApp(context.Background(), "shop"); err != nil {
			t.Fatal(err)
		}
		f.settle(t, len(tasks)-len(gone))
		for _, s := range f.lab.Servers {
			assertHostClean(t, s, gone)
		}
		// blog still works, alone.
		f.mustVerify(t, "blog")
	})
}

// testDrift removes, by hand, the WireGuard peer that carries app -> db on
// the app's host, the sending one, where verify captures that pair's probes:
// verify must fail without any plaintext on that host's underlay, then the
// agent repairs the drift and verify passes.
func testDrift(t *testing.T, f *fleet, tasks []api.TaskInfo) {
	app, db, ok := shopAppAndDB(tasks)
	if !ok {
		t.Skipf("no app task on another server than the db: placement %v", placement(tasks))
	}
	dbSrv := f.lab.Server(db.Server)
	srv := f.lab.Server(app.Server) // the sending host: the peer goes there
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	dbDev, err := wg.Device(dbSrv.WireGuardName)
	if err != nil {
		t.Fatal(err)
	}
	var broken bool
	for attempt := 0; attempt < 3 && !broken; attempt++ {
		err = wg.ConfigureDevice(srv.WireGuardName, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: dbDev.PublicKey, Remove: true}}})
		if err != nil {
			t.Fatal(err)
		}
		// No retry: a retry would give the agent time to repair the peer.
		rep := f.verifyOpt(t, "shop", verify.Options{Timeout: 1500 * time.Millisecond, NoRetry: true})
		for _, c := range rep.Checks {
			if c.Expect == verify.Encrypted && c.Observed == verify.Plain {
				t.Fatalf("fail-closed broken: %s -> %s sent in plain while its peer was missing", c.FromTask, c.ToTask)
			}
			// Its probe ran on the app's host, where the capture looked
			// for plaintext and the peer was missing.
			if !c.OK && c.FromTask == app.ID && c.ToTask == db.ID && c.Port == 5432 && c.Observed != verify.Plain {
				broken = true
			}
		}
		// If verify passed, the agent repaired the peer before verify
		// reached that pair: break it again.
	}
	if !broken {
		t.Fatal("verify did not notice the missing WireGuard peer")
	}
	deadline := time.Now().Add(45 * time.Second)
	for {
		dev, err := wg.Device(srv.WireGuardName)
		if err != nil {
			t.Fatal(err)
		}
		repaired := false
		for _, p := range dev.Peers {
			repaired = repaired || p.PublicKey == dbDev.PublicKey
		}
		if repaired {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent did not repair the removed peer")
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The peer that kept its old session sends on it until a keepalive or
	// a rekey makes it handshake again: give the path that long to return.
	f.verifyWithin(t, "shop", 40*time.Second)
}

// assertHostClean checks that nothing of the deleted tasks is left on a
// host: guest namespace, interface, route, WireGuard allowed IP, nft
// address.
func assertHostClean(t *testing.T, s lab.Server, gone map[string]compile.Task) {
	t.Helper()
	for id := range gone {
		if _, err := os.Stat(guest.NetnsPathIn(s.GuestScope(), id)); err == nil {
			t.Errorf("%s: guest namespace of %s left", s.Name, id)
		}
	}
	h := testnet.Netlink(t, s.Namespace)
	links, _ := h.LinkList()
	for _, l := range links {
		for id := range gone {
			if l.Attrs().Name == compile.HostIf(id) {
				t.Errorf("%s: interface %s of %s left", s.Name, l.Attrs().Name, id)
			}
		}
	}
	var routes []netlink.Route
	for _, table := range []int{unix.RT_TABLE_MAIN, dataplane.TableEncrypt, dataplane.TablePlain} {
		rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatalf("%s: routes of table %d: %v", s.Name, table, err)
		}
		routes = append(routes, rs...)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		for id, task := range gone {
			if r.Dst.IP.String() == task.Address.String() {
				t.Errorf("%s: route to %s (%s) left: %v", s.Name, task.Address, id, r)
			}
		}
	}
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	dev, err := wg.Device(s.WireGuardName)
	if err == nil {
		for _, p := range dev.Peers {
			for _, ip := range p.AllowedIPs {
				for id, task := range gone {
					if ip.IP.String() == task.Address.String() {
						t.Errorf("%s: WireGuard allowed IP %s of %s left", s.Name, ip.IP, id)
					}
				}
			}
		}
	}
	out, err := exec.Command("ip", "netns", "exec", s.Namespace, "nft", "list", "table", "inet", "corridor").CombinedOutput()
	if err == nil {
		for id, task := range gone {
			if bytes.Contains(out, []byte(task.Address.String()+",")) || bytes.Contains(out, []byte(task.Address.String()+" ")) || bytes.Contains(out, []byte(task.Address.String()+"\n")) {
				t.Errorf("%s: nft table still names %s (%s)", s.Name, task.Address, id)
			}
		}
	}
}

// testRotateKey rotates the WireGuard key of the db's server through the
// API: the agent makes the new key on its host, the device carries it,
// the server learns the public key, and verify passes again (the db is
// reached encrypted from the app tier).
func testRotateKey(t *testing.T, f *fleet, tasks []api.TaskInfo) {
	app, db, ok := shopAppAndDB(tasks)
	if !ok {
		t.Skipf("no app task on another server than the db: placement %v", placement(tasks))
	}
	dbServer := db.Server
	ctx := context.Background()
	before, err := f.c.GetServer(ctx, dbServer)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	asked, err := f.c.RotateKey(ctx, dbServer)
	if err != nil {
		t.Fatal(err)
	}
	if asked.Spec.KeyGeneration != before.Spec.KeyGeneration+1 {
		t.Fatalf("generation %d after rotate-key, was %d", asked.Spec.KeyGeneration, before.Spec.KeyGeneration)
	}
	var now api.Server
	deadline := time.Now().Add(30 * time.Second)
	for {
		now, err = f.c.GetServer(ctx, dbServer)
		if err == nil && now.KeyGeneration == asked.Spec.KeyGeneration && now.Spec.PublicKey != before.Spec.PublicKey {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not report a new key within 30 s: %+v, %v", dbServer, now, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	reported := time.Since(start)
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	dev, err := wg.Device(f.lab.Server(dbServer).WireGuardName)
	if err != nil {
		t.Fatal(err)
	}
	if dev.PublicKey.String() != now.Spec.PublicKey {
		t.Fatalf("%s's device holds key %s, the server says %s", dbServer, dev.PublicKey, now.Spec.PublicKey)
	}
	// The app -> db path (encrypted) carries a byte again.
	waitConnected(t, f.lab.GuestNetns(app.ID), net.JoinHostPort(db.Address.String(), "5432"), 30*time.Second, 20*time.Millisecond, "after the rotation")
	back := time.Since(start)
	f.verifyWithin(t, "shop", 30*time.Second)
	t.Logf("key rotation of %s: new key reported after %s, %s -> %s connected again after %s, verify passed after %s",
		dbServer, reported.Round(time.Millisecond), app.ID, db.ID, back.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// shopAppAndDB finds the shop's db task and an app task on another server
// (the app -> db path is then encrypted across hosts); ok is false when
// every app task shares the db's server.
func shopAppAndDB(tasks []api.TaskInfo) (app, db api.TaskInfo, ok bool) {
	return appAndDB(tasks, "shop")
}

// appAndDB is shopAppAndDB for the sample app applied under the name name.
func appAndDB(tasks []api.TaskInfo, name string) (app, db api.TaskInfo, ok bool) {
	for _, ti := range tasks {
		if ti.ID == name+"/db/0" {
			db = ti
		}
	}
	for _, ti := range tasks {
		if ti.App == name && ti.Class == "app" && ti.Server != db.Server {
			return ti, db, db.ID != ""
		}
	}
	return app, db, false
}

// waitConnected dials addr over TCP from inside the guest network
// namespace fromNS (lab.GuestNetns) every step until a byte goes through,
// and fails the test (saying when) if none does within d.
func waitConnected(t testing.TB, fromNS, addr string, d, step time.Duration, when string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		res, err := probe.Dial(ctx, fromNS, "tcp", addr, []byte("PING\n"), 500*time.Millisecond)
		cancel()
		if err == nil && res.Outcome == probe.Connected {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s -> %s not connected %s within %s: %+v %v", filepath.Base(fromNS), addr, when, d, res, err)
		}
		time.Sleep(step)
	}
}
