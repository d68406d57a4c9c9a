package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
)

// FenceFile, in the state directory, records that the host is fenced, so
// that an agent restarted during a partition stays fenced: its stored
// state, applied at start, would otherwise reopen the paths.
const FenceFile = "fenced"

// Fencing (Config.FenceAfter > 0). The control plane marks a host down
// and places its tasks elsewhere once it has heard no status report from
// it for its heartbeat timeout. A host that is only cut off from the
// control plane still runs those tasks: two copies of a task, under one
// overlay address, each with the paths of its class. The agent therefore
// holds a lease: every status report the control plane acknowledges
// renews it, and once it has gone FenceAfter without one, the agent
// fences the host: it applies its desired state without any path (no
// WireGuard peer, VXLAN entry, tunnel route, firewall allowance or
// outside destination), so that its guests, which keep running with their
// data, can neither reach nor be reached by anything. FenceAfter shorter
// than the server's heartbeat timeout fences the old copy before the new
// one starts.
//
// The fence is lifted only once a report went through again and the
// agent holds the control plane's current desired state: a host whose
// tasks moved away meanwhile removes them without reopening their paths
// first.

// fenceCheckEvery is how often the lease is looked at.
func (a *Agent) fenceCheckEvery() time.Duration {
	return min(max(a.cfg.FenceAfter/20, 10*time.Millisecond), 500*time.Millisecond)
}

// renewed records a status report the control plane acknowledged.
func (a *Agent) renewed(at time.Time) {
	a.mu.Lock()
	a.lastAck = at
	a.mu.Unlock()
}

// Fenced says why the host's paths are stopped, or "" when they are not.
func (a *Agent) Fenced() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fenced
}

// loadFence restores a fence recorded by an earlier run (before the
// stored state is applied at start).
func (a *Agent) loadFence() {
	if a.cfg.FenceAfter <= 0 {
		_ = os.Remove(filepath.Join(a.cfg.StateDir, FenceFile))
		return
	}
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, FenceFile))
	if err != nil {
		return
	}
	a.mu.Lock()
	a.fenced = string(b)
	a.fencedAt = a.cfg.Now()
	a.mu.Unlock()
	a.log.Warn("host fenced by an earlier run; its paths stay stopped until the control plane answers", "why", string(b))
}

// fenceLoop fences the host when its lease runs out and lifts the fence
// when the control plane answers again.
func (a *Agent) fenceLoop(ctx context.Context, start time.Time) {
	a.mu.Lock()
	if a.lastAck.IsZero() {
		a.lastAck = start // the lease counts from the agent's start
	}
	a.mu.Unlock()
	t := time.NewTicker(a.fenceCheckEvery())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.checkFence(ctx, a.controlPlane(), a.cfg.Now())
	}
}

func (a *Agent) checkFence(ctx context.Context, cp ControlPlane, now time.Time) {
	a.mu.Lock()
	last, fenced, fencedAt := a.lastAck, a.fenced != "", a.fencedAt
	a.mu.Unlock()
	silent := now.Sub(last)
	switch {
	case !fenced && silent > a.cfg.FenceAfter:
		why := fmt.Sprintf("fenced at %s: no status report acknowledged by the control plane for %s (--fence-after %s); this host's paths are stopped so that no copy of its tasks placed elsewhere meets a stale one here; its guests keep running, cut off, until the control plane answers",
			now.UTC().Format(time.RFC3339), silent.Round(100*time.Millisecond), a.cfg.FenceAfter)
		a.mu.Lock()
		a.fenced, a.fencedAt = why, now
		a.mu.Unlock()
		if err := os.WriteFile(filepath.Join(a.cfg.StateDir, FenceFile), []byte(why), 0o600); err != nil {
			a.log.Error("could not record the fence on disk", "err", err)
		}
		a.m.fences.Inc()
		a.log.Error("host fenced: paths stopped", "why", why)
		signal(a.wake)
	case fenced && last.After(fencedAt):
		// A report went through: take the control plane's current state
		// before anything is reopened.
		rctx, cancel := context.WithTimeout(ctx, statusTimeout)
		ds, err := cp.Desired(rctx, a.cfg.Name, 0, 0)
		cancel()
		if err != nil {
			a.log.Warn("fenced: the control plane answers reports but not the desired state yet", "err", err)
			return
		}
		if ds.Revision > a.targetRevision() || a.targetRevision() == 0 {
			if err := a.accept(ds); err != nil {
				return // refused: stay fenced on the last good state
			}
		}
		a.mu.Lock()
		a.fenced, a.fencedAt = "", time.Time{}
		a.mu.Unlock()
		if err := os.Remove(filepath.Join(a.cfg.StateDir, FenceFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			a.log.Error("could not remove the fence record", "err", err)
		}
		a.log.Info("fence lifted: the control plane answers again; converging to its desired state", "revision", ds.Revision)
		signal(a.wake)
	}
}

// fencedState is st without any path: its guests (and the host's own
// settings), no peer, VXLAN entry, tunnel route, firewall allowance,
// outside destination or published port (an ingress entry names backends
// reached through the peers and tunnels taken away, and a state holding
// one without them is refused as invalid). The data plane's default deny
// then cuts every guest off.
func fencedState(st compile.HostState) compile.HostState {
	st.Peers, st.VXLAN, st.Routes, st.Firewall, st.Outbound, st.Ingress = nil, nil, nil, nil, nil, nil
	st.RouteGroups, st.Derived = nil, false
	return st
}
