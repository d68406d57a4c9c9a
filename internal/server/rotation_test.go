package server

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

// simAgent plays an agent's side of a hitless key rotation against a real
// server, as the agent and data plane do it (agent.reconcile,
// dataplane/rotation.go): it makes its next key when its state asks for a
// newer generation, takes it as its key when its state holds it as the
// host's (commit), and reports per peer the device its routes take, with
// handshakes that are instant.
type simAgent struct {
	a *testAgent

	mu      sync.Mutex
	c       *api.Client
	key     string
	gen     int64
	next    string
	nextGen int64
	// spareSeen records that this host held a peer's next key.
	spareSeen map[string]bool
}

func newSimAgent(a *testAgent) *simAgent {
	return &simAgent{a: a, c: a.c, key: a.req.PublicKey, spareSeen: map[string]bool{}}
}

func (s *simAgent) keys() (key string, gen int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.key, s.gen
}

// step reads the desired state, applies it, and reports.
func (s *simAgent) step(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := s.a.name
	ds, err := s.c.Desired(ctx, name, 0, 0)
	if err != nil {
		return err
	}
	st := ds.State
	if st.KeyGeneration > s.gen && (s.next == "" || st.KeyGeneration > s.nextGen) {
		s.next, s.nextGen = wgKey(), st.KeyGeneration
	}
	if s.next != "" && st.PublicKey == s.next {
		s.key, s.gen, s.next, s.nextGen = s.next, s.nextGen, "", 0
	}
	own := s.next != ""
	spareUp := own || st.RotationPhase != ""
	var peers []api.PeerStatus
	for _, p := range st.Peers {
		toSpare := own || (p.NextPublicKey != "" && p.NextPublicKey != p.PublicKey)
		ps := api.PeerStatus{Server: p.Server, PublicKey: p.PublicKey, LastHandshake: time.Now(), Routed: !toSpare}
		peers = append(peers, ps)
		if spareUp || p.NextPublicKey != "" {
			sp := ps
			sp.Spare, sp.Routed = true, toSpare
			if !spareUp {
				sp.PublicKey = p.NextPublicKey
				s.spareSeen[p.Server+"/"+p.NextPublicKey] = true
			}
			peers = append(peers, sp)
		}
	}
	return s.c.ReportStatus(ctx, name, api.Status{
		Name: name, PublicKey: s.key, KeyGeneration: s.gen, NextPublicKey: s.next, NextKeyGeneration: s.nextGen,
		AppliedRevision: ds.Revision, Peers: peers,
	})
}

// run steps the agent every 20 ms until ctx ends (errors, such as a
// server that is down, are retried as a real agent does).
func (s *simAgent) run(ctx context.Context, wg *sync.WaitGroup) {
	wg.Go(func() {
		for ctx.Err() == nil {
			_ = s.step(ctx)
			sleepCtx(ctx, 20*time.Millisecond)
		}
	})
}

const rotationApp = `apiVersion: corridor/v1
kind: App
name: rot
classes:
  - {name: a, tasks: 1, guest: {runtime: netns, command: [sleep, "1000"]}, resources: {cpu: 100m, memory: 16Mi}, ports: [{port: 80}]}
  - {name: b, tasks: 1, guest: {runtime: netns, command: [sleep, "1000"]}, resources: {cpu: 100m, memory: 16Mi}, ports: [{port: 80}]}
rules:
  - {from: a, to: b, ports: [80], encrypt: true}
`

// waitRotated waits until name's rotation to generation gen is over: no
// rotation recorded, the agent's key of that generation is the server's.
func waitRotated(t *testing.T, c *api.Client, sim *simAgent, gen int64, within time.Duration) api.Server {
	t.Helper()
	var srv api.Server
	eventually(t, within, fmt.Sprintf("rotation to generation %d done", gen), func() (bool, string) {
		var err error
		srv, err = c.GetServer(bg, sim.a.name)
		key, g := sim.keys()
		return err == nil && srv.Spec.Rotation == nil && g == gen && srv.Spec.PublicKey == key && srv.KeyGeneration == gen,
			fmt.Sprintf("%+v %v; agent key generation %d", srv.Spec.Rotation, err, g)
	})
	return srv
}

// rotationPhases lists the phases the events of name's rotation to gen
// record, in order.
func rotationPhases(t *testing.T, c *api.Client, name string, gen int64) []string {
	t.Helper()
	evs, err := c.ListEvents(bg, 500)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	prefix := fmt.Sprintf("key rotation to generation %d", gen)
	for _, e := range evs { // oldest first
		if e.Object != "server/"+name || !strings.HasPrefix(e.Message, prefix) {
			continue
		}
		rest := strings.TrimPrefix(e.Message, prefix)
		switch {
		case strings.HasPrefix(rest, " done"):
			out = append(out, "done")
		case strings.HasPrefix(rest, ": "):
			out = append(out, strings.Fields(strings.TrimPrefix(rest, ": "))[0])
		}
	}
	if len(evs) > 1 && evs[0].Time.After(evs[len(evs)-1].Time) {
		t.Fatalf("events not oldest first")
	}
	return out
}

// A rotation asked through the API runs prepare, announce, commit and
// clear in order, driven by the agents' reports alone: the peer holds the
// next key beside the current one before the server's key changes, the
// server's key is the one the agent made, and three rotations in a row
// each get a new key. Each phase is an event.
func TestHitlessRotation(t *testing.T) {
	t.Parallel()
	ts, s1, s2 := rotationPair(t, Config{})
	keys := map[string]bool{s1.a.req.PublicKey: true}
	for gen := int64(1); gen <= 3; gen++ {
		before, _ := s1.keys()
		if _, err := ts.admin.RotateKey(bg, "s1"); err != nil {
			t.Fatal(err)
		}
		srv := waitRotated(t, ts.admin, s1, gen, 20*time.Second)
		if keys[srv.Spec.PublicKey] {
			t.Fatalf("generation %d: key %s seen before", gen, srv.Spec.PublicKey)
		}
		keys[srv.Spec.PublicKey] = true
		s2.mu.Lock()
		announced := s2.spareSeen["s1/"+srv.Spec.PublicKey]
		s2.mu.Unlock()
		if !announced {
			t.Errorf("generation %d: s2 never held s1's next key %s beside %s", gen, srv.Spec.PublicKey, before)
		}
		if got, want := strings.Join(rotationPhases(t, ts.admin, "s1", gen), " "), "prepare announce commit clear done"; got != want {
			t.Errorf("generation %d: phases %q, want %q", gen, got, want)
		}
	}
	// Back to plain states: no rotation field left anywhere.
	eventually(t, 10*time.Second, "states without rotation", func() (bool, string) {
		d1, err1 := s1.a.c.Desired(bg, "s1", 0, 0)
		d2, err2 := s2.a.c.Desired(bg, "s2", 0, 0)
		ok := err1 == nil && err2 == nil && d1.State.RotationPhase == "" && d1.State.PublicKey == "" && len(d2.State.Peers) == 1 && d2.State.Peers[0].NextPublicKey == ""
		return ok && d2.State.Peers[0].PublicKey == mustKey(s1), fmt.Sprint(d1.State.RotationPhase, d2.State.Peers)
	})
}

// rotationPair starts a server with cfg and two simulated agents, s1 and
// s2, running until the test ends, with rotationApp applied: s2 holds s1
// as the peer of an encrypted pair.
func rotationPair(t *testing.T, cfg Config) (*testServer, *simAgent, *simAgent) {
	t.Helper()
	ts := startServer(t, cfg)
	s1, s2 := newSimAgent(ts.join(t, "s1", 0, nil)), newSimAgent(ts.join(t, "s2", 1, nil))
	if _, err := ts.admin.ApplyApp(bg, []byte(rotationApp)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	s1.run(ctx, &wg)
	s2.run(ctx, &wg)
	eventually(t, 10*time.Second, "s2 holds s1 as a peer", func() (bool, string) {
		ds, err := s2.a.c.Desired(bg, "s2", 0, 0)
		return err == nil && len(ds.State.Peers) == 1, fmt.Sprint(ds.State.Peers, err)
	})
	return ts, s1, s2
}

func mustKey(s *simAgent) string {
	k, _ := s.keys()
	return k
}

// A control plane stopped in the middle of a rotation (phase announce:
// the peer holds both keys) resumes it from etcd when it starts again,
// and the rotation completes.
func TestRotationResumesAfterRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ts := startServer(t, Config{DataDir: dir})
	addr := ts.URL()
	s1, s2 := newSimAgent(ts.join(t, "s1", 0, nil)), newSimAgent(ts.join(t, "s2", 1, nil))
	if _, err := ts.admin.ApplyApp(bg, []byte(rotationApp)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "s2 holds s1 as a peer", func() (bool, string) {
		ds, err := s2.a.c.Desired(bg, "s2", 0, 0)
		return err == nil && len(ds.State.Peers) == 1, fmt.Sprint(ds.State.Peers, err)
	})
	// s2 stays silent for now: the rotation cannot go past announce.
	ctx, cancel := context.WithCancel(bg)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	s1.run(ctx, &wg)
	if _, err := ts.admin.RotateKey(bg, "s1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "phase announce", func() (bool, string) {
		srv, err := ts.admin.GetServer(bg, "s1")
		return err == nil && srv.Spec.Rotation != nil && srv.Spec.Rotation.Phase == spec.RotationAnnounce, fmt.Sprint(srv.Spec.Rotation, err)
	})
	ts.stop()

	// Started again on the same data directory and address.
	u := strings.TrimPrefix(addr, "https://")
	if _, _, err := net.SplitHostPort(u); err != nil {
		t.Fatal(err)
	}
	ts2 := startServer(t, Config{DataDir: dir, Listen: u})
	srv, err := ts2.admin.GetServer(bg, "s1")
	if err != nil || srv.Spec.Rotation == nil || srv.Spec.Rotation.Phase != spec.RotationAnnounce {
		t.Fatalf("after the restart: rotation %+v, %v; want phase announce kept", srv.Spec.Rotation, err)
	}
	s2.run(ctx, &wg)
	waitRotated(t, ts2.admin, s1, 1, 60*time.Second)
	if got, want := strings.Join(rotationPhases(t, ts2.admin, "s1", 1), " "), "prepare announce commit clear done"; got != want {
		t.Errorf("phases %q, want %q", got, want)
	}
}

// A rotation asked of a server whose agent has not reported yet (just
// joined, or its first report is slow) starts once the agent reports:
// the controller keeps looking for it rather than waiting for an
// unrelated change. (This stalled TestRotationResumesAfterRestart when
// the ask beat the agent's first report.)
func TestRotationAskedBeforeFirstReport(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	s1, s2 := newSimAgent(ts.join(t, "s1", 0, nil)), newSimAgent(ts.join(t, "s2", 1, nil))
	if _, err := ts.admin.ApplyApp(bg, []byte(rotationApp)); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.admin.RotateKey(bg, "s1"); err != nil {
		t.Fatal(err)
	}
	// Let the controller look while neither agent has reported.
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithCancel(bg)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	s1.run(ctx, &wg)
	s2.run(ctx, &wg)
	waitRotated(t, ts.admin, s1, 1, 15*time.Second)
}

// The phases that move traffic off a device (announce: off the first
// devices, whose sessions go at commit; commit: off the second devices,
// which go at clear) stay settled for the drain before the rotation moves
// on, even with agents that settle at once: packets a loaded user-space
// WireGuard still holds on the device it left get out first.
func TestRotationDrainsBeforeSessionsGo(t *testing.T) {
	t.Parallel()
	const drain = 700 * time.Millisecond
	ts, s1, _ := rotationPair(t, Config{RotationDrain: drain})
	if _, err := ts.admin.RotateKey(bg, "s1"); err != nil {
		t.Fatal(err)
	}
	waitRotated(t, ts.admin, s1, 1, 20*time.Second)
	evs, err := ts.admin.ListEvents(bg, 500)
	if err != nil {
		t.Fatal(err)
	}
	took := regexp.MustCompile(`\((announce|commit|clear|prepare) took ([0-9.]+[a-zµ]+)`)
	seen := map[string]time.Duration{}
	for _, e := range evs {
		if m := took.FindStringSubmatch(e.Message); m != nil && e.Object == "server/s1" {
			d, err := time.ParseDuration(m[2])
			if err != nil {
				t.Fatal(err)
			}
			seen[m[1]] = d
			if drains := m[1] == "announce" || m[1] == "commit"; drains != strings.Contains(e.Message, "drained") {
				t.Errorf("event %q: says it drained %v, want %v", e.Message, !drains, drains)
			}
		}
	}
	for _, ph := range []string{"announce", "commit"} {
		if d, ok := seen[ph]; !ok || d < drain {
			t.Errorf("phase %s took %s (seen %v), want at least the drain %s", ph, d, ok, drain)
		}
	}
	// Phase clear has nothing to drain after it: its event says so (a
	// bound on its time would fail on a loaded machine).
	if _, ok := seen["clear"]; !ok {
		t.Errorf("no event of phase clear (seen %v)", seen)
	}
}
