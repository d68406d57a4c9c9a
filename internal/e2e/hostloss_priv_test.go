package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/probe"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// hostLossTimes are the times, from the cut, at which the server recorded
// the host down, a request from a surviving app task reached the db again
// (through its new host), the fleet settled and verify passed.
type hostLossTimes struct {
	down, firstRequest, settled, verified time.Duration
}

// TestHostLoss cuts off the server that runs the shop's db, during
// traffic to it, as a power cut does: every process of the host (agent,
// WireGuard data path, guests) is killed, its guests are gone and its
// underlay link goes down. The control plane must mark it down (event
// server.down), place its tasks elsewhere exactly as the compiler's
// spreading rules say, the new hosts must start them and set their paths
// on both ends, and verify must pass. Heartbeat timeout 5 s, status every
// second.
func TestHostLoss(t *testing.T) {
	got := runHostLoss(t, 5*time.Second, time.Second)
	t.Logf("host loss with a 5s heartbeat timeout: server.down after %s, first request through the moved db after %s, settled after %s, verify passed after %s",
		got.down, got.firstRequest, got.settled, got.verified)
}

// BenchmarkHostLoss measures, once per run, the time from the cut to
// verify passing, with a 5 s heartbeat timeout (status every second) and
// with the defaults (30 s, status every 5 s).
func BenchmarkHostLoss(b *testing.B) {
	for _, c := range []struct {
		name           string
		timeout, every time.Duration
	}{
		{"timeout=5s", 5 * time.Second, time.Second},
		{"timeout=default", 0, 0},
	} {
		b.Run(c.name, func(b *testing.B) {
			var sum hostLossTimes
			for range b.N {
				got := runHostLoss(b, c.timeout, c.every)
				sum.down += got.down
				sum.firstRequest += got.firstRequest
				sum.settled += got.settled
				sum.verified += got.verified
			}
			n := float64(b.N)
			b.ReportMetric(sum.down.Seconds()/n, "s-to-down")
			b.ReportMetric(sum.firstRequest.Seconds()/n, "s-to-first-request")
			b.ReportMetric(sum.settled.Seconds()/n, "s-to-settled")
			b.ReportMetric(sum.verified.Seconds()/n, "s-to-verify")
		})
	}
}

// runHostLoss runs the host-loss scenario on a lab of its own; timeout
// and every 0 keep the server's and agents' defaults.
func runHostLoss(t testing.TB, timeout, every time.Duration) hostLossTimes {
	f := upFleetOpts(t, func(o *lab.Options) {
		if timeout > 0 {
			o.ServerArgs = append(o.ServerArgs, "--heartbeat-timeout", timeout.String())
		}
		if every > 0 {
			o.AgentArgs = append(o.AgentArgs, "--status-interval", every.String())
		}
	})
	shop := f.applyOwn(t, examples.Shop)
	before := f.settle(t, 5)
	f.verifyWithin(t, shop, 30*time.Second)

	var db api.TaskInfo
	for _, ti := range before {
		if ti.ID == shop+"/db/0" {
			db = ti
		}
	}
	victim := db.Server
	var from api.TaskInfo // an app task that survives the cut
	for _, ti := range before {
		if ti.Class == "app" && ti.Server != victim {
			from = ti
		}
	}
	if db.ID == "" || from.ID == "" {
		t.Fatalf("no db task, or no app task off the db's server: %v", placement(before))
	}
	lost := map[string]bool{}
	for _, ti := range before {
		if ti.Server == victim {
			lost[ti.ID] = true
		}
	}
	// What the compiler decides for the fleet without the victim, from
	// the placement before the cut: the control plane must do just that.
	want := expectedPlacement(t, f.c, victim)

	dbAddr := net.JoinHostPort(db.Address.String(), "5432")
	waitConnected(t, f.lab.GuestNetns(from.ID), dbAddr, 30*time.Second, 200*time.Millisecond, "before the cut")
	loop := startRequestLoop(f.lab.GuestNetns(from.ID), dbAddr)
	defer loop.stop()

	cut := time.Now()
	cutOff(t, f.lab, victim, lost)

	var got hostLossTimes
	ev := waitEvent(t, f.c, "server.down", "server/"+victim, 3*max(timeout, 30*time.Second))
	got.down = time.Since(cut) // the event is polled every 50 ms: time when seen
	for id := range lost {
		if !strings.Contains(ev.Message, id) {
			t.Errorf("the server.down event does not name %s, which leaves %s: %q", id, victim, ev.Message)
		}
	}
	after := f.settle(t, 5)
	got.settled = time.Since(cut)
	f.verifyWithin(t, shop, 60*time.Second)
	got.verified = time.Since(cut)
	first, ok := loop.firstSuccessAfter(cut)
	if !ok {
		t.Errorf("no request from %s reached the db at %s again after the cut", from.ID, dbAddr)
	}
	got.firstRequest = first.Sub(cut)

	now := map[string]api.TaskInfo{}
	for _, ti := range after {
		now[ti.ID] = ti
	}
	for id, server := range want {
		ti := now[id]
		if ti.Server != server {
			t.Errorf("%s placed on %s, the compiler's rules say %s", id, ti.Server, server)
		}
		if ti.Server == victim {
			t.Errorf("%s still placed on the lost server %s", id, victim)
		}
	}
	srv, err := f.c.GetServer(context.Background(), victim)
	if err != nil || srv.State != spec.ServerDown {
		t.Errorf("%s: %+v, %v; want down", victim, srv.State, err)
	}
	return got
}

// expectedPlacement is the compiler's placement of the fleet's apps with
// victim down, from the current placement: task ID -> server.
func expectedPlacement(t testing.TB, c *api.Client, victim string) map[string]string {
	ctx := context.Background()
	apps, err := c.ListApps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	servers, err := c.ListServers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := c.ListTasks(ctx, api.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	in := compile.Input{}
	for _, a := range apps {
		in.Apps = append(in.Apps, a.Spec)
	}
	for _, s := range servers {
		sp := s.Spec
		if sp.Name == victim {
			sp.State = spec.ServerDown
		}
		in.Servers = append(in.Servers, sp)
	}
	for _, ti := range tasks {
		in.Current = append(in.Current, compile.Assignment{Task: ti.ID, Server: ti.Server, Address: ti.Address})
	}
	plan, err := compile.Compile(in)
	if err != nil {
		t.Fatalf("compile without %s: %v", victim, err)
	}
	out := map[string]string{}
	for ti := range plan.Tasks.All() {
		out[ti.ID] = ti.Server
	}
	return out
}

// cutOff takes server name off the fleet as a power cut would: every
// process in its namespace or in one of its guests' (agent, WireGuard
// data path, task programs) is killed with SIGKILL, its guests'
// namespaces are gone, and its underlay link is down.
func cutOff(t testing.TB, l *lab.Lab, name string, tasks map[string]bool) {
	t.Helper()
	s := l.Server(name)
	inodes := map[uint64]bool{}
	ino, err := hostns.Inode(s.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	inodes[ino] = true
	var guests []string
	for id := range tasks {
		n := filepath.Base(l.GuestNetnsOn(name, id))
		guests = append(guests, n)
		if ino, err := hostns.Inode(n); err == nil {
			inodes[ino] = true
		}
	}
	sort.Strings(guests)
	killed := killInNamespaces(t, inodes)
	if len(killed) == 0 {
		t.Fatalf("no process found in %s's namespaces", name)
	}
	// Its link to the underlay goes down, at both ends.
	h := testnet.Netlink(t, s.Namespace)
	if link, err := h.LinkByName("eth0"); err != nil {
		t.Fatal(err)
	} else if err := h.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	u := testnet.Netlink(t, l.UnderlayNamespace)
	if link, err := u.LinkByName(s.BridgePort); err != nil {
		t.Fatal(err)
	} else if err := u.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	// A host that lost power loses its guests. (Their namespaces are
	// named machine-wide: left here, the new host would take them over.)
	for _, n := range guests {
		if err := hostns.Delete(n); err != nil {
			t.Fatalf("remove guest namespace %s of the lost host: %v", n, err)
		}
	}
	t.Logf("cut %s off: killed pids %v, underlay link down, guests %v gone", name, killed, guests)
}

// killInNamespaces sends SIGKILL to every process whose network namespace
// is one of inodes, until none is left, and returns their PIDs.
func killInNamespaces(t testing.TB, inodes map[uint64]bool) []int {
	t.Helper()
	var killed []int
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []int
		procs, _ := filepath.Glob("/proc/[0-9]*")
		for _, p := range procs {
			pid, err := strconv.Atoi(filepath.Base(p))
			if err != nil || pid == os.Getpid() {
				continue
			}
			var st syscall.Stat_t
			if err := syscall.Stat(p+"/ns/net", &st); err != nil || !inodes[st.Ino] {
				continue
			}
			left = append(left, pid)
			if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
				killed = append(killed, pid)
			}
		}
		if len(left) == 0 {
			return killed
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v still in the lost host's namespaces", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitEvent waits until the control plane has recorded an event of
// action about object, and returns it.
func waitEvent(t testing.TB, c *api.Client, action, object string, d time.Duration) api.Event {
	t.Helper()
	return waitEventSince(t, c, action, object, time.Time{}, d)
}

// waitEventSince is waitEvent for an event recorded after since (a lab
// that lived through earlier steps may hold older ones).
func waitEventSince(t testing.TB, c *api.Client, action, object string, since time.Time, d time.Duration) api.Event {
	t.Helper()
	start := time.Now()
	for {
		evs, err := c.ListEvents(context.Background(), 200)
		if err == nil {
			for _, e := range evs {
				if e.Action == action && e.Object == object && e.Time.After(since) {
					t.Logf("event %s %s: %s", action, object, e.Message)
					return e
				}
			}
		}
		if time.Since(start) > d {
			t.Fatalf("no event %s about %s within %s (last error %v)", action, object, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// requestLoop sends requests one after the other (startRequestLoop,
// startLoop), recording when each that succeeded began.
type requestLoop struct {
	mu   sync.Mutex
	ok   []time.Time
	fail int
	done chan struct{}
	wg   sync.WaitGroup
}

// startRequestLoop sends one request (connect, PING, answer) from a
// task's guest, network namespace fromNS, to addr every 100 ms.
func startRequestLoop(fromNS, addr string) *requestLoop {
	return startLoop(100*time.Millisecond, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		res, err := probe.Dial(ctx, fromNS, "tcp", addr, []byte("PING\n"), 500*time.Millisecond)
		return err == nil && res.Outcome == probe.Connected
	})
}

// startLoop runs request every interval (or, when one takes longer, right
// after it), recording when each that succeeded began.
func startLoop(every time.Duration, request func() bool) *requestLoop {
	l := &requestLoop{done: make(chan struct{})}
	l.wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-l.done:
				return
			case <-tick.C:
			}
			began := time.Now()
			ok := request()
			l.mu.Lock()
			if ok {
				l.ok = append(l.ok, began)
			} else {
				l.fail++
			}
			l.mu.Unlock()
		}
	})
	return l
}

func (l *requestLoop) stop() {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	l.wg.Wait()
}

// firstSuccessAfter is the first request begun after t that succeeded.
func (l *requestLoop) firstSuccessAfter(t time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, at := range l.ok {
		if at.After(t) {
			return at, true
		}
	}
	return time.Time{}, false
}

func (l *requestLoop) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("%d ok, %d failed", len(l.ok), l.fail)
}
