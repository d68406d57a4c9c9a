package e2e

import (
	"context"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

// vmHostLossTimeout is the control plane's heartbeat timeout during the
// host-loss step of the VM-host test (the VM agents report every second:
// upVMHosts).
const vmHostLossTimeout = 5 * time.Second

// testVMHostLoss is host loss on VM hosts (TestHostLoss's scenario, with
// a real power cut): the control plane is restarted with a 5 s heartbeat
// timeout, then the VM host that runs the shop's db is powered off while
// the app task on the other host sends requests to the db. The control
// plane must record server.down naming the lost host's tasks, place them
// on the surviving host as the compiler says, with the same overlay
// addresses; they start there, their paths are set, the request loop is
// answered again and verify passes (the figure: power-off to verify
// passing). Then the host is powered on: server.up, its agent removes the
// moved tasks (they do not come back) and verify still passes. The shop
// needs 950m CPU and 512 MiB: one 1-CPU, 1 GiB VM host holds it all.
func testVMHostLoss(t *testing.T, f *fleet) {
	ctx := context.Background()
	l := f.lab
	if err := l.StopServer(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	l.ServerArgs = append(l.ServerArgs, "--heartbeat-timeout", vmHostLossTimeout.String())
	if err := l.StartServer(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	before := f.settleWithin(t, 5, 5*time.Minute)
	// dbAndApp: the db, and an app task on another host (that survives
	// the cut).
	dbAndApp := func(tasks []api.TaskInfo) (db, from api.TaskInfo, ok bool) {
		for _, ti := range tasks {
			if ti.ID == "shop/db/0" {
				db = ti
			}
		}
		for _, ti := range tasks {
			if ti.Class == "app" && ti.Server != db.Server {
				from = ti
			}
		}
		return db, from, db.ID != "" && from.ID != ""
	}
	if _, _, ok := dbAndApp(before); !ok {
		// A power-off above that outlasted the default heartbeat timeout
		// (a slow TCG boot) moved s1's tasks: place the shop afresh, spread
		// over both hosts.
		t.Logf("the shop is not spread (%v): deleted and applied again", placement(before))
		if err := f.c.DeleteApp(ctx, "shop"); err != nil {
			t.Fatal(err)
		}
		f.settleWithin(t, 0, 5*time.Minute)
		f.apply(t, examples.Shop)
		before = f.settleWithin(t, 5, 5*time.Minute)
	}
	f.verifyWithin(t, "shop", 3*time.Minute)
	db, from, ok := dbAndApp(before)
	if !ok {
		t.Fatalf("no db task, or no app task off the db's server: %v", placement(before))
	}
	victim := db.Server
	survivor := from.Server
	lost := map[string]api.TaskInfo{}
	for _, ti := range before {
		if ti.Server == victim {
			lost[ti.ID] = ti
		}
	}
	want := expectedPlacement(t, f.c, victim)

	// A request: from the app task's guest on the surviving host to the
	// db on port 5432 (connect), through that host's agent.
	request := func() bool {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		res, err := f.c.Probe(rctx, survivor, api.ProbeRequest{FromTask: from.ID, ToAddr: db.Address.String(),
			Network: "tcp", Port: 5432, Marker: []byte("corridor-e2e-vmhostloss"), Timeout: 1500 * time.Millisecond})
		return err == nil && res.Connected
	}
	for deadline := time.Now().Add(2 * time.Minute); !request(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s does not reach the db at %s before the cut", from.ID, db.Address)
		}
		time.Sleep(500 * time.Millisecond)
	}
	loop := startLoop(200*time.Millisecond, request)
	defer loop.stop()

	cut := time.Now()
	if err := l.PowerOff(victim); err != nil {
		t.Fatal(err)
	}
	off := time.Now() // a request begun after this cannot reach the old db
	t.Logf("powered %s off (tasks %v) during requests from %s on %s to the db", victim, slices.Sorted(maps.Keys(lost)), from.ID, survivor)

	ev := waitEventSince(t, f.c, "server.down", "server/"+victim, cut, 3*time.Minute)
	down := time.Since(cut)
	for id := range lost {
		if !strings.Contains(ev.Message, id) {
			t.Errorf("the server.down event does not name %s, which leaves %s: %q", id, victim, ev.Message)
		}
	}
	after := f.settleWithin(t, 5, 5*time.Minute)
	settled := time.Since(cut)
	f.verifyWithin(t, "shop", 3*time.Minute)
	verified := time.Since(cut)
	var first time.Time
	for deadline := time.Now().Add(2 * time.Minute); ; {
		var ok bool
		if first, ok = loop.firstSuccessAfter(off); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no request from %s reached the db at %s again after the power-off (%s)", from.ID, db.Address, loop)
		}
		time.Sleep(500 * time.Millisecond)
	}
	loop.stop()
	t.Logf("figure: VM host %s powered off during requests to its db (heartbeat timeout %s, status every 1s, %s): server.down after %s, first request through the moved db after %s, settled after %s, verify passed after %s (%s)",
		victim, vmHostLossTimeout, l.Servers[0].VM.Accel, down.Round(100*time.Millisecond), first.Sub(cut).Round(100*time.Millisecond),
		settled.Round(100*time.Millisecond), verified.Round(100*time.Millisecond), loop)

	now := map[string]api.TaskInfo{}
	for _, ti := range after {
		now[ti.ID] = ti
	}
	for id, server := range want {
		if ti := now[id]; ti.Server != server {
			t.Errorf("%s placed on %s, the compiler's rules say %s", id, ti.Server, server)
		}
	}
	for id, was := range lost {
		ti := now[id]
		if ti.Server != survivor {
			t.Errorf("%s placed on %s after %s's loss, want the surviving host %s", id, ti.Server, victim, survivor)
		}
		if ti.Address != was.Address {
			t.Errorf("%s moved with address %s, had %s", id, ti.Address, was.Address)
		}
	}
	srv, err := f.c.GetServer(ctx, victim)
	if err != nil || srv.State != spec.ServerDown {
		t.Errorf("%s: %+v, %v; want down", victim, srv.State, err)
	}

	// Power back on: the host reports again and takes no task back; its
	// agent, which restored its guests from its state disk at boot,
	// removes the moved ones as its desired state no longer holds them.
	on, err := l.PowerOn(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	waitEventSince(t, f.c, "server.up", "server/"+victim, on, 5*time.Minute)
	vm := l.Server(victim).VM
	removed := map[string]*regexp.Regexp{}
	for id := range lost {
		removed[id] = regexp.MustCompile(`msg="guest removed".* task=` + regexp.QuoteMeta(id) + `(\s|$)`)
	}
	for deadline := time.Now().Add(5 * time.Minute); ; {
		s, err := f.c.GetServer(ctx, victim)
		b, _ := os.ReadFile(vm.Console)
		var left []string
		if vm.ConsoleOffset <= int64(len(b)) {
			b = b[vm.ConsoleOffset:]
		}
		for id, re := range removed {
			if !re.Match(b) {
				left = append(left, id)
			}
		}
		if err == nil && s.State == spec.ServerReady && s.AppliedRevision >= s.DesiredRevision && len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s 5m after power-on: state %s, applied revision %d of %d (%v); the agent has not logged the removal of %v",
				victim, s.State, s.AppliedRevision, s.DesiredRevision, err, left)
		}
		time.Sleep(time.Second)
	}
	t.Logf("figure: VM host %s power-on to server.up and the moved tasks removed by its agent: %s", victim, time.Since(on).Round(100*time.Millisecond))
	back := f.settleWithin(t, 5, 5*time.Minute)
	for _, ti := range back {
		if ti.Server == victim {
			t.Errorf("%s is on %s again: moved tasks must not come back", ti.ID, victim)
		}
	}
	f.verifyWithin(t, "shop", 3*time.Minute)
}
