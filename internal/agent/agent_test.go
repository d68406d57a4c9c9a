package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/agent/agenttest"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

func TestJoinOnceThenReuseStoredCertificate(t *testing.T) {
	h := newHarness(t)
	h.start()
	eventually(t, "join and a status report over mTLS", func() bool { return len(h.cp.Statuses(host)) > 0 })
	h.stop()
	if n := h.cp.Joins(); n != 1 {
		t.Fatalf("joins = %d, want 1", n)
	}
	for f, want := range map[string]os.FileMode{agent.KeyFile: 0o600, agent.CertFile: 0o644, agent.CAFile: 0o644} {
		fi, err := os.Stat(filepath.Join(h.dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", f, fi.Mode().Perm(), want)
		}
	}

	// A restart, with the token still given, uses the stored certificate.
	before := len(h.cp.Statuses(host))
	h.start()
	eventually(t, "a status report after restart", func() bool { return len(h.cp.Statuses(host)) > before })
	h.stop()

	// And so does one without any token.
	h.cfg.Bootstrap, h.cfg.JoinToken = nil, ""
	before = len(h.cp.Statuses(host))
	h.start()
	eventually(t, "a status report without a token", func() bool { return len(h.cp.Statuses(host)) > before })
	h.stop()
	if n := h.cp.Joins(); n != 1 {
		t.Fatalf("joins after restarts = %d, want 1", n)
	}
}

func TestNoIdentityAndNoTokenIsAnError(t *testing.T) {
	h := newHarness(t)
	h.cfg.Bootstrap, h.cfg.JoinToken = nil, ""
	a, err := agent.New(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(context.Background())
	if err == nil || !errors.Is(err, agent.ErrNoIdentity) || !strings.Contains(err.Error(), "join token") {
		t.Fatalf("Run = %v, want ErrNoIdentity asking for a join token", err)
	}
}

func TestWrongJoinTokenIsAnError(t *testing.T) {
	h := newHarness(t)
	h.cfg.JoinToken = "not-the-token"
	if err := runJoin(t, h); api.HTTPStatus(err) != 401 {
		t.Fatalf("Run = %v, want the 401 at once", err)
	}
	if _, err := os.Stat(filepath.Join(h.dir, agent.KeyFile)); err == nil {
		t.Error("a key was stored although the join failed")
	}
}

func TestJoinRetriesUntilTheServerAnswers(t *testing.T) {
	h := newHarness(t)
	h.cp.FailNext(3)
	h.start()
	eventually(t, "join after failures", func() bool { return h.cp.Joins() == 1 })
}

func TestExpiredCertificateJoinsAgain(t *testing.T) {
	h := newHarness(t)
	h.cp.CertValidity = 30 * time.Minute
	h.start()
	eventually(t, "first join", func() bool { return h.cp.Joins() == 1 })
	h.stop()
	// 29 minutes later, the stored certificate is within a tenth of its
	// lifetime of expiry.
	h.cfg.Now = func() time.Time { return time.Now().Add(29 * time.Minute) }
	h.cp.CertValidity = 2 * time.Hour
	h.start()
	eventually(t, "second join", func() bool { return h.cp.Joins() == 2 })
}

// persistCheck is a data plane that, at each Apply, reads desired.json and
// records whether the state on disk is the one being applied.
type persistCheck struct {
	*agenttest.Dataplane
	dir string

	mu      sync.Mutex
	onDisk  []int64
	matches []bool
}

func (p *persistCheck) Apply(ctx context.Context, st compile.HostState) error {
	ds, ok, err := agent.LoadDesired(p.dir)
	p.mu.Lock()
	p.onDisk = append(p.onDisk, ds.Revision)
	p.matches = append(p.matches, ok && err == nil && reflect.DeepEqual(ds.State.Guests, st.Guests))
	p.mu.Unlock()
	return p.Dataplane.Apply(ctx, st)
}

func TestDesiredStateIsPersistedBeforeApply(t *testing.T) {
	h := newHarness(t)
	pc := &persistCheck{Dataplane: h.dp, dir: h.dir}
	h.cfg.Dataplane = pc
	h.start()
	r1 := h.apply(t, "revision 1 applied", state("shop/web/0"))
	r2 := h.apply(t, "revision 2 applied", state("shop/web/0", "shop/web/1"))

	pc.mu.Lock()
	defer pc.mu.Unlock()
	if !slices.Equal(pc.onDisk, []int64{r1, r2}) {
		t.Errorf("revisions on disk at each apply = %v, want [%d %d]", pc.onDisk, r1, r2)
	}
	for i, m := range pc.matches {
		if !m {
			t.Errorf("apply %d: the state on disk is not the one applied", i)
		}
	}
	fi, err := os.Stat(filepath.Join(h.dir, agent.DesiredFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("desired.json mode %v, want 0600", fi.Mode().Perm())
	}
	// No temporary file is left behind.
	entries, _ := os.ReadDir(h.dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("leftover temporary file %s", e.Name())
		}
	}
}

// The stored state, signed by the control plane, is applied at start with
// the server down: with a whole identity, and with only the CA kept from
// the join (an identity whose certificate expired), which is all that
// verifying the state needs.
func TestFailStaticAppliesStoredStateWithServerDown(t *testing.T) {
	for _, joined := range []bool{true, false} {
		t.Run(map[bool]string{true: "joined", false: "ca-only"}[joined], func(t *testing.T) {
			h := newHarness(t)
			if joined {
				preJoin(t, h.cp, h.dir)
			} else if err := os.WriteFile(filepath.Join(h.dir, agent.CAFile), h.cp.CA.CertPEM, 0o644); err != nil {
				t.Fatal(err)
			}
			st := state("shop/web/0", "shop/web/1")
			saveSigned(t, h, 41, st)
			h.cp.SetDown(true)
			h.start()
			eventually(t, "stored state applied", func() bool { return h.agent.AppliedRevision() == 41 })
			if !h.dp.InSync(st) {
				t.Error("data plane not in the stored state")
			}
			for _, g := range st.Guests {
				if !h.guests.Running(g.Task) {
					t.Errorf("guest %s not running", g.Task)
				}
			}
			// The server comes back with a newer state: it wins.
			h.cp.SetDown(false)
			h.apply(t, "newer state applied", state("shop/web/0"))
			if h.guests.Running("shop/web/1") {
				t.Error("shop/web/1 still runs after the server removed it")
			}
		})
	}
}

// A stored state signed by the control plane but for another host is not
// applied (signed, so that the host is what refuses it, not a missing
// signature; the fail-static test shows the same state for this host
// applies).
func TestStoredStateOfAnotherHostIsIgnored(t *testing.T) {
	h := newHarness(t)
	preJoin(t, h.cp, h.dir)
	st := state("shop/web/0")
	st.Host = "s9"
	saveSigned(t, h, 5, st)
	h.cp.SetDown(true)
	h.start()
	// The stored state is dealt with at start, before the first poll.
	eventually(t, "the first poll (the stored state handled before it)", func() bool { return len(h.cp.PollTimes()) > 0 })
	if h.dp.Applies() != 0 || h.guests.Running("shop/web/0") || h.agent.AppliedRevision() != 0 {
		t.Fatal("the state of another host was applied")
	}
}

func TestPeriodicRepairUndoesDrift(t *testing.T) {
	h := newHarness(t)
	h.cfg.RepairInterval = 30 * time.Millisecond
	h.start()
	st := state("shop/web/0")
	h.cp.SetDesired(st)
	eventually(t, "state applied", func() bool { return h.dp.InSync(st) && h.guests.Running("shop/web/0") })

	// Someone deletes the WireGuard peer and a firewall rule by hand.
	h.dp.Tamper(func(k *compile.HostState) { k.Peers, k.Firewall = nil, nil })
	if h.dp.InSync(st) {
		t.Fatal("tamper had no effect")
	}
	eventually(t, "peer and rule repaired", func() bool { return h.dp.InSync(st) })

	// And kills a guest.
	if err := h.guests.Remove(context.Background(), "shop/web/0"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "guest restarted", func() bool { return h.guests.Running("shop/web/0") })
}

func TestSameRevisionIsNotReapplied(t *testing.T) {
	h := newHarness(t)
	h.cfg.PollWait = 20 * time.Millisecond // many empty long polls
	h.start()
	h.apply(t, "state applied", state("shop/web/0"))
	applies := h.dp.Applies()
	polls := len(h.cp.PollTimes())
	eventually(t, "5 more empty long polls", func() bool { return len(h.cp.PollTimes())-polls >= 5 })
	if got := h.dp.Applies(); got != applies {
		t.Fatalf("applies went from %d to %d with no new revision", applies, got)
	}
	h.apply(t, "new revision applied", state("shop/web/0", "shop/web/1"))
	if got := h.dp.Applies(); got != applies+1 {
		t.Fatalf("applies = %d after one new revision, want %d", got, applies+1)
	}
}

func TestGuestsNoLongerDesiredAreRemoved(t *testing.T) {
	h := newHarness(t)
	// A guest left over from an earlier state, unknown to the new one.
	h.guests.Add(compile.Guest{Task: "old/job/0"})
	h.start()
	h.cp.SetDesired(state("shop/web/0", "shop/web/1"))
	eventually(t, "two guests", func() bool {
		return h.guests.Running("shop/web/0") && h.guests.Running("shop/web/1") && !h.guests.Running("old/job/0")
	})
	h.apply(t, "shop/web/1 removed", state("shop/web/0"))
	if h.guests.Running("shop/web/1") || !h.guests.Running("shop/web/0") {
		t.Fatal("wrong guests after removal")
	}
	ev := h.ev.List()
	want := []string{"remove:old/job/0", "apply:2", "start:shop/web/0", "start:shop/web/1", "remove:shop/web/1", "apply:1"}
	if !slices.Equal(ev, want) {
		t.Fatalf("events\n got %q\nwant %q", ev, want)
	}
}

func TestNewGuestsStartOnlyAfterTheDataplane(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.dp.Fail(errors.New("nftables: operation not permitted"))
	r := h.cp.SetDesired(state("shop/web/0"))
	eventually(t, "a status with the error", func() bool {
		sts := h.cp.Statuses(host)
		return len(sts) > 0 && len(sts[len(sts)-1].Errors) > 0
	})
	if h.guests.Running("shop/web/0") {
		t.Fatal("guest started although the data plane failed")
	}
	if h.agent.AppliedRevision() == r {
		t.Fatal("revision reported applied although the data plane failed")
	}
	sts := h.cp.Statuses(host)
	errs := strings.Join(sts[len(sts)-1].Errors, "\n")
	for _, want := range []string{"operation not permitted", "shop/web/0 not started"} {
		if !strings.Contains(errs, want) {
			t.Errorf("status errors %q lack %q", errs, want)
		}
	}

	// The data plane recovers; the next state is applied, guests start
	// after it, and no guest ever ran uncovered.
	h.dp.Fail(nil)
	h.apply(t, "applied", state("shop/web/0", "shop/web/1"))
	if v := h.guests.Violations(); len(v) > 0 {
		t.Fatalf("guests started before their firewall: %v", v)
	}
}

func TestBackoffOnPollErrors(t *testing.T) {
	h := newHarness(t)
	preJoin(t, h.cp, h.dir)
	h.cfg.BackoffMin = 10 * time.Millisecond
	h.cfg.BackoffMax = 80 * time.Millisecond
	h.cp.SetDown(true)
	h.start()
	eventually(t, "8 polls against the down server", func() bool { return len(h.cp.PollTimes()) >= 8 })
	checkBackoff(t, h.cp.PollTimes()[:8], 10*time.Millisecond, 80*time.Millisecond)
	h.cp.SetDown(false)
	h.apply(t, "recovery", state("shop/web/0"))
}

func TestStatusReport(t *testing.T) {
	h := newHarness(t)
	h.dp.Drops = []api.DropCount{{App: "shop", FromClass: "web", ToClass: "cache", Packets: 7}}
	h.start()
	h.guests.Fail("shop/web/1", errors.New("exec: sleep: not found"))
	r := h.cp.SetDesired(state("shop/web/0", "shop/web/1"))
	var st api.Status
	eventually(t, "a status after the apply", func() bool {
		sts := h.cp.Statuses(host)
		if len(sts) == 0 {
			return false
		}
		st = sts[len(sts)-1]
		return len(st.Tasks) == 2
	})
	if pub, _ := h.dp.Key(); st.Name != host || st.Address != "198.18.0.1" || st.PublicKey != pub ||
		st.WireGuardPort != 51820 || st.Capacity != h.cfg.Capacity || st.Labels["zone"] != "a" {
		t.Errorf("identity fields wrong: %+v", st)
	}
	if st.AppliedRevision == r {
		t.Error("revision reported applied although a guest failed")
	}
	if st.Tasks[0].Task != "shop/web/0" || st.Tasks[0].State != api.TaskRunning ||
		st.Tasks[1].Task != "shop/web/1" || st.Tasks[1].State != api.TaskFailed {
		t.Errorf("tasks = %+v", st.Tasks)
	}
	if len(st.Peers) != 1 || st.Peers[0].Server != "s2" || st.Peers[0].LastHandshake.IsZero() || st.Peers[0].TxBytes == 0 {
		t.Errorf("peers = %+v", st.Peers)
	}
	if !reflect.DeepEqual(st.Drops, h.dp.Drops) {
		t.Errorf("drops = %+v", st.Drops)
	}
	if len(st.Errors) != 1 || !strings.Contains(st.Errors[0], "shop/web/1") || !strings.Contains(st.Errors[0], "not found") {
		t.Errorf("errors = %q", st.Errors)
	}
	if time.Since(st.Time) > 5*time.Second {
		t.Errorf("time = %v", st.Time)
	}

	// The guest is fixed; the next status says so.
	h.guests.Fail("shop/web/1", nil)
	h2 := h.cp.SetDesired(state("shop/web/0", "shop/web/1"))
	eventually(t, "a clean status", func() bool {
		sts := h.cp.Statuses(host)
		st = sts[len(sts)-1]
		return st.AppliedRevision == h2
	})
	if len(st.Errors) != 0 || st.Tasks[1].State != api.TaskRunning {
		t.Errorf("after the fix: errors %q, tasks %+v", st.Errors, st.Tasks)
	}
}

func TestStatusIsReportedPeriodically(t *testing.T) {
	h := newHarness(t)
	h.cfg.StatusInterval = 20 * time.Millisecond
	h.start()
	eventually(t, "five heartbeats", func() bool { return len(h.cp.Statuses(host)) >= 5 })
}

func TestStateRoutingTheServerIntoATunnelIsRefused(t *testing.T) {
	h := newHarness(t)
	h.cfg.ServerAddrs = []netip.Addr{netip.MustParseAddr("100.64.0.20")} // the db guest's address
	h.start()
	h.cp.SetDesired(state("shop/web/0"))
	eventually(t, "a status with the refusal", func() bool {
		sts := h.cp.Statuses(host)
		return len(sts) > 0 && len(sts[len(sts)-1].Errors) > 0
	})
	sts := h.cp.Statuses(host)
	if e := sts[len(sts)-1].Errors[0]; !strings.Contains(e, "control channel") || !strings.Contains(e, "s2") {
		t.Errorf("error = %q", e)
	}
	if h.dp.Applies() != 0 || h.guests.Running("shop/web/0") {
		t.Error("the refused state was applied")
	}
}

func TestShutdownLeavesGuestsAndDataplane(t *testing.T) {
	h := newHarness(t)
	h.start()
	st := state("shop/web/0")
	h.apply(t, "applied", st)
	h.stop()
	if !h.guests.Running("shop/web/0") || !h.dp.InSync(st) || h.dp.Removed() {
		t.Fatal("shutdown touched guests or data plane")
	}
}

func TestCleanupRemovesEverything(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.apply(t, "applied", state("shop/web/0", "shop/web/1"))
	h.stop()
	if err := agent.Cleanup(context.Background(), h.guests, h.dp.Remove, h.dir, nil); err != nil {
		t.Fatal(err)
	}
	if tasks, _ := h.guests.List(context.Background()); len(tasks) != 0 {
		t.Errorf("guests left: %v", tasks)
	}
	if !h.dp.Removed() {
		t.Error("data plane not removed")
	}
	if _, ok, _ := agent.LoadDesired(h.dir); ok {
		t.Error("desired.json left: a restart would bring the guests back")
	}
	if _, err := agent.LoadIdentity(h.dir, host, time.Now()); err != nil {
		t.Errorf("identity removed: %v", err)
	}
}

// checkBackoff checks the gaps between consecutive polls against the
// backoff's lower bounds: after the n-th consecutive failure the agent
// waits at least min(lo*2^n, hi)/2 (5, 10, 20, 40, 40 ms for 10ms/80ms).
// Only lower bounds: a loaded machine makes gaps longer, never shorter,
// and a missing backoff makes them near zero.
func checkBackoff(t *testing.T, times []time.Time, lo, hi time.Duration) {
	t.Helper()
	d := lo
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < d/2 {
			t.Errorf("poll %d came %v after the previous one, want at least %v", i, gap, d/2)
		}
		d = min(2*d, hi)
	}
	if d != hi {
		t.Fatalf("checkBackoff: %d polls do not reach the backoff's cap", len(times))
	}
}

// earlyPoller answers every long poll at once with the same revision, as a
// server that does not block would.
type earlyPoller struct {
	agent.ControlPlane
	mu    sync.Mutex
	times []time.Time
}

func (e *earlyPoller) Desired(ctx context.Context, name string, index int64, _ time.Duration) (api.DesiredState, error) {
	e.mu.Lock()
	e.times = append(e.times, time.Now())
	e.mu.Unlock()
	return api.DesiredState{Revision: index}, nil
}

func (e *earlyPoller) pollTimes() []time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.times)
}

func TestEarlyEmptyPollsDoNotSpin(t *testing.T) {
	h := newHarness(t)
	h.cfg.PollWait = time.Minute
	h.cfg.BackoffMin = 10 * time.Millisecond
	h.cfg.BackoffMax = 80 * time.Millisecond
	ep := &earlyPoller{}
	connect := h.cfg.Connect
	h.cfg.Connect = func(id *agent.Identity) (agent.ControlPlane, error) {
		cp, err := connect(id)
		ep.ControlPlane = cp
		return ep, err
	}
	h.start()
	eventually(t, "8 polls answered at once", func() bool { return len(ep.pollTimes()) >= 8 })
	checkBackoff(t, ep.pollTimes()[:8], 10*time.Millisecond, 80*time.Millisecond)
}

// A desired state from a buggy or hostile server is refused whole: the host
// keeps its last good state (in the kernel and on disk) and says why.
func TestInvalidStateKeepsTheLastGoodState(t *testing.T) {
	cases := map[string]func(*compile.HostState){
		"unknown runtime": func(st *compile.HostState) { st.Guests[0].Spec.Runtime = "docker" },
		"not IPv4":        func(st *compile.HostState) { st.Guests[0].Address = netip.MustParseAddr("fd00::1") },
		"link-local":      func(st *compile.HostState) { st.Guests[0].Address = netip.MustParseAddr("169.254.1.1") },
		"duplicate address": func(st *compile.HostState) {
			st.Guests = append(st.Guests, st.Guests[0])
			st.Guests[1].Task = "shop/web/9"
		},
		"absurd count": func(st *compile.HostState) {
			for i := 0; i < 1001; i++ {
				g := st.Guests[0]
				g.Task = fmt.Sprintf("shop/web/%d", i+10)
				st.Guests = append(st.Guests, g)
			}
		},
		"dataplane says no": func(st *compile.HostState) { st.VTEPMAC = "not-a-mac" },
	}
	for name, breakIt := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			h.cfg.ValidateDataplane = func(st compile.HostState) error {
				if st.VTEPMAC == "not-a-mac" {
					return fmt.Errorf("vtepMAC: %q is not a MAC address", st.VTEPMAC)
				}
				return nil
			}
			h.start()
			good := h.apply(t, "the good state applied", state("shop/web/0"))
			applies := h.dp.Applies()

			bad := state("shop/web/0", "shop/web/1")
			breakIt(&bad)
			badRev := h.cp.SetDesired(bad)
			eventually(t, "a status naming the refusal", func() bool {
				sts := h.cp.Statuses(host)
				if len(sts) == 0 {
					return false
				}
				for _, e := range sts[len(sts)-1].Errors {
					if strings.Contains(e, fmt.Sprintf("revision %d refused", badRev)) {
						return true
					}
				}
				return false
			})
			if h.dp.Applies() != applies || h.guests.Running("shop/web/1") || h.agent.AppliedRevision() != good {
				t.Fatal("the refused state reached the host")
			}
			ds, _, err := agent.LoadDesired(h.dir)
			if err != nil || ds.Revision != good {
				t.Fatalf("desired.json holds revision %d (%v), want the good %d", ds.Revision, err, good)
			}
			// A later good state is taken, and the refusal is forgotten.
			h.apply(t, "the next good state applied", state("shop/web/0", "shop/web/1"))
		})
	}
}

// A desired state with a higher key generation makes the agent make its
// next key once (the current one stays), before it applies the state, and
// report the next public key; repairs and the same state again make no
// other. A state that holds the next key as the host's own (phase commit)
// makes it the current key, reported with its generation.
func TestKeyRotation(t *testing.T) {
	h := newHarness(t)
	h.cfg.RepairInterval = 20 * time.Millisecond
	h.start()
	first, gen := h.dp.Key()
	if gen != 0 {
		t.Fatalf("fresh key of generation %d", gen)
	}
	st := signedState("shop/web/0")
	h.cp.SetDesired(st)
	eventually(t, "state applied", func() bool { return h.dp.InSync(st) })

	st.KeyGeneration = 1
	h.apply(t, "state of generation 1 applied", st)
	if k, g := h.dp.Key(); k != first || g != 0 {
		t.Fatalf("the current key changed before the commit: %s generation %d", k, g)
	}
	next, ngen, ok := h.dp.NextKey()
	if !ok || ngen != 1 || next == first {
		t.Fatalf("after a generation-1 state: next key %s generation %d %v", next, ngen, ok)
	}
	eventually(t, "next key reported", func() bool {
		sts := h.cp.Statuses(host)
		return len(sts) > 0 && sts[len(sts)-1].NextPublicKey == next && sts[len(sts)-1].NextKeyGeneration == 1 && sts[len(sts)-1].PublicKey == first
	})
	// The next key comes before the apply of the same state.
	evs := h.ev.List()
	ri := slices.Index(evs, "prepare-key:1")
	if ri < 0 || !slices.Contains(evs[ri+1:], "apply:1") {
		t.Errorf("events %v: want prepare-key:1 then an apply", evs)
	}
	applies := h.dp.Applies()
	eventually(t, "3 repair passes", func() bool { return h.dp.Applies() >= applies+3 })
	if n := strings.Count(strings.Join(h.ev.List(), " "), "prepare-key"); n != 1 {
		t.Fatalf("%d next keys for one generation", n)
	}

	st.RotationPhase, st.PublicKey = hoststate.RotationCommit, next
	h.apply(t, "commit applied", st)
	if k, g := h.dp.Key(); k != next || g != 1 {
		t.Fatalf("after the commit: key %s generation %d, want %s 1", k, g, next)
	}
	eventually(t, "committed key reported", func() bool {
		sts := h.cp.Statuses(host)
		return len(sts) > 0 && sts[len(sts)-1].PublicKey == next && sts[len(sts)-1].KeyGeneration == 1 && sts[len(sts)-1].NextPublicKey == ""
	})
}
