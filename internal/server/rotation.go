package server

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
)

// Hitless key rotations, as the controller drives them (the data plane's
// side is internal/dataplane/rotation.go; docs/architecture.md, "Hitless
// key rotation").
//
// `rotate-key` raises a server's KeyGeneration (askKeyRotation); the
// controller runs one rotation at a time in the fleet (a host's second
// WireGuard device serves one rotation only), in four phases kept in the
// server's record (spec.Server.Rotation), so that a control plane that
// stops in the middle resumes where it was from etcd, and the agents go
// on meanwhile with both key generations working:
//
//	prepare   the host's state carries the generation; its agent makes
//	          the next key on the host and reports its public half
//	announce  its peers hold the next key on their second device; done
//	          when every side routes the other's guests by it
//	commit    the next key is the server's key; done when the host uses
//	          it and every side routes by the first device again
//	clear     the second devices go; done when every side applied it
//
// Each step is decided from the agents' reports (their applied revision,
// and per peer the device its routes take), never from time, and is
// recorded as an event.

// rotationStep looks at the rotation under way, if any, and moves it on
// when its phase is done; with none under way it starts the next one
// asked for. Called by the leader on its tick and when an agent reports.
func (c *controller) rotationStep(ctx context.Context, now time.Time, since time.Time) error {
	sn, err := c.st.Snapshot(ctx)
	if err != nil {
		return err
	}
	var active *store.ServerRecord
	for i := range sn.Servers {
		if r := &sn.Servers[i]; !r.Revoked && r.Server.Rotation != nil {
			active = r
			break
		}
	}
	hosts, err := c.st.Hosts(ctx)
	if err != nil {
		return err
	}
	_, states := fleet(sn, c.hub.lastSeen(), now, since, c.timeout)
	if active == nil {
		started, err := c.startRotation(ctx, sn, hosts, states, now)
		if !started && err == nil {
			c.rotating.Store(false) // nothing to do until one is asked
		}
		return err
	}
	rs := rotationView{name: active.Server.Name, rot: *active.Server.Rotation, hosts: hosts, states: states}
	next, why, done := rs.phaseDone()
	if !done {
		c.drain.reset()
		return nil
	}
	if drains(rs.rot.Phase) {
		key := fmt.Sprintf("%s/%d/%s", rs.name, rs.rot.Generation, rs.rot.Phase)
		if wait := c.drain.remaining(key, now, c.rotationDrain); wait > 0 {
			time.AfterFunc(wait, c.kickRotation)
			return nil
		}
		why += fmt.Sprintf(", for %s (drained)", c.rotationDrain)
	}
	if err := c.advanceRotation(ctx, rs.name, rs.rot.Phase, next, why, now); err != nil {
		return err
	}
	if next == "" {
		c.kickRotation() // the next one asked may start now
	}
	return nil
}

// startRotation starts the rotation of the first server (by name) whose
// asked generation is above the one its agent reports, unless its agent
// has not reported or is down (it could not answer; the others go first).
func (c *controller) startRotation(ctx context.Context, sn *store.Snapshot, hosts map[string]*store.HostKeys, states map[string]string, now time.Time) (bool, error) {
	for _, r := range sn.Servers {
		name := r.Server.Name
		h := hosts[name]
		if r.Revoked || states[name] == spec.ServerDown || h == nil || h.Status == nil {
			continue
		}
		if r.Server.KeyGeneration <= h.Status.Status.KeyGeneration {
			continue
		}
		ev := api.Event{Who: "controller", Action: "server.rotate-key", Object: "server/" + name}
		_, err := c.st.UpdateServer(ctx, name, func(rec *store.ServerRecord) (bool, error) {
			if rec.Revoked || rec.Server.Rotation != nil || rec.Server.KeyGeneration <= h.Status.Status.KeyGeneration {
				return false, nil
			}
			rec.Server.Rotation = &spec.KeyRotation{
				Generation: rec.Server.KeyGeneration, Phase: spec.RotationPrepare,
				PreviousPublicKey: rec.Server.PublicKey, Started: now.UTC(), PhaseSince: now.UTC(),
			}
			ev.Message = fmt.Sprintf("key rotation to generation %d: prepare (the agent makes its next key on the host)", rec.Server.KeyGeneration)
			return true, nil
		}, &ev)
		if err != nil {
			return false, fmt.Errorf("start the key rotation of %s: %w", name, err)
		}
		c.log.Info("key rotation started", "server", name, "generation", r.Server.KeyGeneration)
		return true, nil
	}
	// A rotation asked of a server whose agent is down, or has not
	// reported yet, waits for it; the tick looks again. (Not looking
	// again for an agent that has never reported left a rotation asked
	// right after a join waiting for an unrelated change.)
	for _, r := range sn.Servers {
		if r.Revoked {
			continue
		}
		var reported int64
		if h := hosts[r.Server.Name]; h != nil && h.Status != nil {
			reported = h.Status.Status.KeyGeneration
		}
		if r.Server.KeyGeneration > reported {
			return true, nil
		}
	}
	return false, nil
}

// kickRotation asks the leader to look at the key rotations soon (an
// agent reported, a rotation was asked).
func (c *controller) kickRotation() {
	c.rotating.Store(true)
	select {
	case c.rotKick <- struct{}{}:
	default:
	}
}

// advanceRotation moves server name's rotation from phase from to next
// (next "" ends it), unless it moved meanwhile.
func (c *controller) advanceRotation(ctx context.Context, name, from, next, why string, now time.Time) error {
	ev := api.Event{Who: "controller", Action: "server.rotate-key", Object: "server/" + name}
	var took time.Duration
	_, err := c.st.UpdateServer(ctx, name, func(rec *store.ServerRecord) (bool, error) {
		r := rec.Server.Rotation
		if r == nil || r.Phase != from {
			return false, nil
		}
		took = now.Sub(r.PhaseSince)
		if next == "" {
			ev.Message = fmt.Sprintf("key rotation to generation %d done in %s (%s took %s): %s",
				r.Generation, now.Sub(r.Started).Round(time.Millisecond), from, took.Round(time.Millisecond), why)
			rec.Server.Rotation = nil
			return true, nil
		}
		nr := *r
		switch next {
		case spec.RotationAnnounce:
			nr.NextPublicKey = why
			why = "the host reported its next key " + why
		case spec.RotationCommit:
			// The next key becomes the server's key: its peers' first
			// devices take it, the host puts it on its own.
			rec.Server.PublicKey = nr.NextPublicKey
			rec.KeyChangedAt = now.UTC()
		}
		nr.Phase, nr.PhaseSince = next, now.UTC()
		rec.Server.Rotation = &nr
		ev.Message = fmt.Sprintf("key rotation to generation %d: %s (%s took %s: %s)",
			r.Generation, next, from, took.Round(time.Millisecond), why)
		return true, nil
	}, &ev)
	if err != nil {
		return fmt.Errorf("move the key rotation of %s on to %q: %w", name, next, err)
	}
	c.log.Info("key rotation", "server", name, "from", from, "to", next, "took", took)
	return nil
}

// rotationView is what the controller knows of one rotation: the
// rotating server, its rotation, and every host's desired state and
// last report.
type rotationView struct {
	name   string
	rot    spec.KeyRotation
	hosts  map[string]*store.HostKeys
	states map[string]string
}

// phaseDone tells whether the rotation's phase is done and, if so, the
// phase that follows ("" for none) and why (for phase prepare, the
// next public key).
func (v rotationView) phaseDone() (next, why string, done bool) {
	r := v.rot
	h := v.hosts[v.name]
	if h == nil || h.Status == nil {
		return "", "", false
	}
	st := h.Status.Status
	switch r.Phase {
	case spec.RotationPrepare:
		if st.NextPublicKey != "" && st.NextKeyGeneration == r.Generation && st.NextPublicKey != st.PublicKey {
			return spec.RotationAnnounce, st.NextPublicKey, true
		}
		if st.KeyGeneration >= r.Generation {
			// The host has a key of that generation already (a rotation
			// committed before the control plane lost its record): nothing
			// to announce.
			return "", "the host's key is of that generation already", true
		}
		return "", "", false
	case spec.RotationAnnounce:
		if v.settled(hoststate.RotationAnnounce, r.NextPublicKey, true) {
			return spec.RotationCommit, "every side routes by the second device", true
		}
	case spec.RotationCommit:
		if st.PublicKey == r.NextPublicKey && st.KeyGeneration >= r.Generation && v.settled(hoststate.RotationCommit, r.NextPublicKey, false) {
			return spec.RotationClear, "the host uses its new key, every side routes by the first device again", true
		}
	case spec.RotationClear:
		if v.settled("", "", false) {
			return "", "the second devices are gone", true
		}
	}
	return "", "", false
}

// settled tells whether the rotating host and every peer of it that is
// not down have applied the state of the phase (phase "" with next "":
// no rotation any more) and route each other's guests by the second
// device (spare) or the first. After phase clear, no second device is
// left at all.
func (v rotationView) settled(phase, next string, spare bool) bool {
	own := v.hosts[v.name]
	st, ok := v.desired(v.name)
	if !ok || st.RotationPhase != phase || !v.applied(v.name) {
		return false
	}
	peers := map[string]bool{}
	for _, p := range st.Peers {
		peers[p.Server] = true
	}
	for name := range v.hosts {
		if name == v.name || peers[name] {
			continue
		}
		if pst, ok := v.desired(name); ok && slices.ContainsFunc(pst.Peers, func(p hoststate.Peer) bool { return p.Server == v.name }) {
			peers[name] = true
		}
	}
	for q := range peers {
		if v.states[q] == spec.ServerDown {
			continue // down: it gets the state of the day when it is back
		}
		qst, ok := v.desired(q)
		if !ok || !v.applied(q) {
			return false
		}
		i := slices.IndexFunc(qst.Peers, func(p hoststate.Peer) bool { return p.Server == v.name })
		if i >= 0 && qst.Peers[i].NextPublicKey != next {
			return false // its state is not of this phase yet
		}
		qs := v.hosts[q].Status.Status
		if phase == "" {
			if hasSpare(qs) {
				return false
			}
			continue
		}
		// The rotating host's view of q, and q's view of the rotating
		// host under the key of the phase.
		if !routedBy(own.Status.Status, q, "", spare) {
			return false
		}
		if i >= 0 && !routedBy(qs, v.name, next, spare) {
			return false
		}
	}
	return phase != "" || !hasSpare(own.Status.Status)
}

// desired decodes a host's desired state.
func (v rotationView) desired(name string) (hoststate.State, bool) {
	h := v.hosts[name]
	if h == nil || h.Desired == nil {
		return hoststate.State{}, false
	}
	var st hoststate.State
	if err := json.Unmarshal(h.Desired, &st); err != nil {
		return hoststate.State{}, false
	}
	return st, true
}

// applied tells whether a host's agent reports its latest desired state
// applied.
func (v rotationView) applied(name string) bool {
	h := v.hosts[name]
	return h != nil && h.Status != nil && h.DesiredRevision > 0 && h.Status.Status.AppliedRevision >= h.DesiredRevision
}

// routedBy tells whether a report shows server's guests routed by the
// second WireGuard device (spare) or the first, with the peer held under
// key (any key when empty).
func routedBy(st api.Status, server, key string, spare bool) bool {
	return slices.ContainsFunc(st.Peers, func(p api.PeerStatus) bool {
		return p.Server == server && p.Routed && p.Spare == spare && (key == "" || p.PublicKey == key)
	})
}

func hasSpare(st api.Status) bool {
	return slices.ContainsFunc(st.Peers, func(p api.PeerStatus) bool { return p.Spare })
}

// Draining a device before its sessions go.
//
// Moving a route off a WireGuard device does not move the packets the
// device already took: a user-space WireGuard (wireguard-go) holds them
// in its queues until it encrypts and sends them, and on a loaded host
// that lags by hundreds of milliseconds (up to 280 ms measured on the lab
// at load 19 on 2 cores: TestHitlessRotationUnderLoad, with captures on
// both hosts). The next phase then takes that device's sessions away (at
// commit the first devices change keys and peers; at clear the second
// devices go), and the late packets, sent under a session the other side
// no longer has, are lost. Nothing reports when a user-space device's
// queues are empty (its per-peer counters count what it sent, not what
// it still holds), so the controller lets a phase that moved the traffic
// off a device stay settled for rotationDrain before it moves on. That
// wait is the one step of a rotation decided by time: a drain shorter
// than the lag loses those packets, never sends them in clear.

// DefaultRotationDrain is the drain of a rotation phase unless
// Config.RotationDrain says otherwise: several times the longest lag
// measured.
const DefaultRotationDrain = time.Second

// drains tells whether phase moved traffic off a device whose sessions
// the phase after it takes away: announce (the first devices, which
// change keys at commit) and commit (the second devices, which go at
// clear).
func drains(phase string) bool {
	return phase == spec.RotationAnnounce || phase == spec.RotationCommit
}

// drainClock remembers since when the phase under way has been settled.
type drainClock struct {
	key   string
	since time.Time
}

// remaining tells how long the phase named key must stay settled still,
// starting its clock when key is new.
func (d *drainClock) remaining(key string, now time.Time, drain time.Duration) time.Duration {
	if d.key != key {
		d.key, d.since = key, now
	}
	return drain - now.Sub(d.since)
}

// reset forgets the clock: the phase is not settled (any more).
func (d *drainClock) reset() { *d = drainClock{} }
