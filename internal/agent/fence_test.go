package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"time"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/compile"
)

// recordingDataplane keeps every state applied, in order.
type recordingDataplane struct {
	agent.Dataplane
	mu      sync.Mutex
	applied []compile.HostState
}

func (r *recordingDataplane) Apply(ctx context.Context, st compile.HostState) error {
	r.mu.Lock()
	r.applied = append(r.applied, st)
	r.mu.Unlock()
	return r.Dataplane.Apply(ctx, st)
}

func (r *recordingDataplane) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.applied)
}

func (r *recordingDataplane) since(i int) []compile.HostState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.applied[i:])
}

// withoutPaths is st as a fenced host applies it.
func withoutPaths(st compile.HostState) compile.HostState {
	st.Peers, st.VXLAN, st.Routes, st.Firewall, st.Outbound = nil, nil, nil, nil, nil
	return st
}

func hasPaths(st compile.HostState) bool {
	return len(st.Peers) > 0 || len(st.VXLAN) > 0 || len(st.Routes) > 0 || len(st.Firewall) > 0 || len(st.Outbound) > 0
}

func fencingHarness(t *testing.T) (*harness, *recordingDataplane) {
	h := newHarness(t)
	rec := &recordingDataplane{Dataplane: h.dp}
	h.cfg.Dataplane = rec
	h.cfg.StatusInterval = 20 * time.Millisecond
	h.cfg.FenceAfter = 300 * time.Millisecond
	return h, rec
}

// A host whose status reports go unacknowledged for FenceAfter stops its
// paths (guests keep running), says why in its status and on disk; when
// the control plane answers again, with the host's tasks moved away
// meanwhile, it removes them without reopening their paths first.
func TestFenceStopsPathsUntilTheControlPlaneAnswers(t *testing.T) {
	h, rec := fencingHarness(t)
	h.start()
	both := state("shop/web/0", "shop/web/1")
	h.apply(t, "the first state", both)
	if !hasPaths(both) {
		t.Fatal("the test state has no paths")
	}
	if h.agent.Fenced() != "" {
		t.Fatalf("fenced while the control plane answers: %s", h.agent.Fenced())
	}

	h.cp.SetDown(true) // a partition: nothing reaches the control plane
	cut := rec.count()
	eventually(t, "the host fenced", func() bool { return h.agent.Fenced() != "" && h.dp.InSync(withoutPaths(both)) })
	for _, g := range both.Guests {
		if !h.guests.Running(g.Task) {
			t.Errorf("guest %s stopped by the fence; it should keep running, cut off", g.Task)
		}
	}
	why := h.agent.Status(context.Background()).Fenced
	if !strings.Contains(why, "no status report acknowledged") || !strings.Contains(why, "--fence-after 300ms") {
		t.Errorf("status says %q, want the reason", why)
	}
	if b, err := os.ReadFile(filepath.Join(h.dir, agent.FenceFile)); err != nil || string(b) != why {
		t.Errorf("fence record: %q, %v", b, err)
	}

	// Meanwhile the control plane placed shop/web/1 elsewhere.
	moved := state("shop/web/0")
	rev := h.cp.SetDesired(moved)
	h.cp.SetDown(false)
	eventually(t, "the fence lifted on the new state", func() bool {
		return h.agent.Fenced() == "" && h.agent.AppliedRevision() == rev && h.dp.InSync(moved)
	})
	if h.guests.Running("shop/web/1") {
		t.Error("shop/web/1 still runs on the host it moved away from")
	}
	for i, st := range rec.since(cut) {
		for _, g := range st.Guests {
			if g.Task == "shop/web/1" && hasPaths(st) {
				t.Fatalf("apply %d after the cut opened paths again with shop/web/1 on the host (stale state): %+v", i, st)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(h.dir, agent.FenceFile)); !os.IsNotExist(err) {
		t.Errorf("fence record left after the fence was lifted: %v", err)
	}
}

// An agent restarted while fenced stays fenced: its stored state is
// applied without paths until the control plane answers.
func TestFenceSurvivesAgentRestart(t *testing.T) {
	h, rec := fencingHarness(t)
	h.start()
	st := state("shop/web/0")
	h.apply(t, "the first state", st)
	h.cp.SetDown(true)
	eventually(t, "the host fenced", func() bool { return h.agent.Fenced() != "" && h.dp.InSync(withoutPaths(st)) })
	h.stop()

	cut := rec.count()
	h.start()
	eventually(t, "the stored state applied again", func() bool { return rec.count() > cut })
	if first := rec.since(cut)[0]; hasPaths(first) {
		t.Fatalf("the restarted agent reopened the paths of a fenced host: %+v", first)
	}
	if h.agent.Fenced() == "" {
		t.Fatal("the restarted agent is not fenced")
	}
	h.cp.SetDown(false)
	eventually(t, "the fence lifted", func() bool { return h.agent.Fenced() == "" && h.dp.InSync(st) })
}

// Without FenceAfter the host fails static: a control plane outage leaves
// its paths in place however long it lasts.
func TestNoFenceByDefault(t *testing.T) {
	h := newHarness(t)
	h.cfg.StatusInterval = 20 * time.Millisecond
	h.start()
	st := state("shop/web/0")
	h.apply(t, "the first state", st)
	h.cp.SetDown(true)
	n := len(h.cp.PollTimes())
	eventually(t, "several failed polls", func() bool { return len(h.cp.PollTimes()) > n+5 })
	if h.agent.Fenced() != "" || !h.dp.InSync(st) {
		t.Fatalf("fenced without --fence-after: %q", h.agent.Fenced())
	}
}
