package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
)

// encodedHost is a host state and its JSON (controller.encoded).
type encodedHost struct {
	state hoststate.State
	data  []byte
	// form is the form data is written in (State.WrittenAs): route
	// groups (schema 1.5) or a derived state (1.6), written so for an
	// agent that reported it reads them; else today's expanded routes and
	// full lists.
	form string
}

// controller turns stored apps and servers into placement and per-host
// desired state. Only the elected leader among the servers sharing an
// etcd runs it; every write it makes is guarded by its leadership key, so
// a deposed leader that has not noticed yet cannot write.
type controller struct {
	st      *store.Store
	hub     *hub
	m       *metrics
	log     *slog.Logger
	id      string
	ttl     int
	timeout time.Duration // heartbeat
	// keyRotation > 0: rotate keys older than this (rotateKeys).
	keyRotation     time.Duration
	lastRotateCheck time.Time
	// rotationDrain is how long a rotation phase that moved traffic off
	// a device stays settled before the next phase takes that device's
	// sessions away; drain tracks since when (rotation.go). Only the
	// leader's loop uses drain.
	rotationDrain time.Duration
	drain         drainClock

	leader atomic.Bool
	kick   chan struct{}
	// rotKick asks for a key rotation step (rotation.go); rotating is set
	// while a rotation is asked or under way, so that the tick looks.
	rotKick   chan struct{}
	rotating  atomic.Bool
	mu        sync.Mutex
	lastDown  string // down set at the last compile, joined
	lastError string // last compile error, to log it once
	// cache makes a recompile after a small change cheap; only reconcile
	// uses it. It keeps the last plan's paths and host states alive.
	cache compile.Cache
	// reconciles counts completed reconciles, for tests.
	reconciles atomic.Int64
	// mirror holds apps, servers, placement and desired states from the
	// watch: a reconcile reads them there, not from etcd.
	mirror *store.Mirror
	// placed holds the encoded placement records (writePlacement).
	placed placedCache
	// encoded holds, per host, the state the last reconcile encoded and
	// its JSON: a state that is the same (hoststate.State.Same: the cache handed
	// it out again) is not encoded again. Only reconcile uses it;
	// hostEncodes counts the states it encoded, for tests.
	encoded     map[string]encodedHost
	hostEncodes atomic.Int64
	// moving is set while a make-before-break move is under way
	// (move.go): agents' reports and the tick then ask for a reconcile,
	// which moves it on. moveTimeout bounds each of its phases
	// (DefaultMoveTimeout when 0; negative: tasks move in one step).
	moving      atomic.Bool
	moveTimeout time.Duration
	// moveChecked: this leader has read the move record from etcd once
	// (one left by another leader resumes); only the leader's loop uses it.
	moveChecked bool
	// moveHosts are the hosts the move under way concerns (mu): only
	// their reports ask for a reconcile.
	moveHosts map[string]bool
	// moveLook is when the tick next looks at the move under way (unix
	// nanoseconds): its phase's timeout, or a while later when reports
	// should have moved it on. The reports of the hosts it concerns are
	// what moves it (statusSeen); a reconcile at every tick compiled the
	// fleet three times a second for the whole move.
	moveLook atomic.Int64
}

func newController(st *store.Store, h *hub, m *metrics, log *slog.Logger, id string, ttl int, timeout time.Duration) *controller {
	return &controller{st: st, hub: h, m: m, log: log, id: id, ttl: ttl, timeout: timeout, kick: make(chan struct{}, 1), rotKick: make(chan struct{}, 1), mirror: store.NewMirror(st)}
}

// trigger asks for a reconcile soon; many triggers make one reconcile.
func (c *controller) trigger() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// run campaigns for leadership and leads while elected, until ctx ends.
func (c *controller) run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := c.campaignAndLead(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("controller election", "err", err)
			sleepCtx(ctx, time.Second)
		}
	}
}

func (c *controller) campaignAndLead(ctx context.Context) error {
	sess, err := concurrency.NewSession(c.st.Client(), concurrency.WithTTL(c.ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, c.st.LeaderPrefix())
	if err := el.Campaign(ctx, c.id); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	c.log.Info("controller elected", "id", c.id)
	c.leader.Store(true)
	defer func() {
		c.leader.Store(false)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = el.Resign(rctx) // the lease ends with the session anyway
		c.log.Info("controller stepped down", "id", c.id)
	}()
	guard := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done(): // lease lost: someone else may lead now
			cancel()
		case <-lctx.Done():
		}
	}()
	return c.lead(lctx, guard, time.Now())
}

func (c *controller) lead(ctx context.Context, guard []clientv3.Cmp, since time.Time) error {
	c.moveChecked = false // a move the last leader left resumes
	// Changes of apps and servers come from the mirror, once it holds
	// them (a watch of its own could wake a reconcile before).
	changes := c.mirror.Changes()
	tick := time.NewTicker(c.checkEvery())
	defer tick.Stop()
	c.trigger()
	// A rotation left half done by the last leader (or before an outage)
	// resumes from its phase in etcd.
	c.kickRotation()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
			c.trigger()
			// A rotation may have been asked through another server of
			// the cluster: the tick looks (rotationStep clears the flag
			// when there is nothing to do).
			c.rotating.Store(true)
		case now := <-tick.C:
			c.tick(ctx, since, now)
			if c.rotating.Load() {
				c.stepRotations(ctx, since)
			}
		case <-c.rotKick:
			c.stepRotations(ctx, since)
		case <-retry.C:
			c.trigger()
		case <-c.kick:
			if err := c.reconcile(ctx, guard, since); err != nil && ctx.Err() == nil {
				c.log.Warn("reconcile failed; retrying", "err", err)
				retry.Reset(time.Second)
			}
		}
	}
}

// stepRotations runs rotationStep, logging a failure (the tick retries).
// It first asks the mirror and the hub whether any rotation is under way
// or asked (rotationAsked): every change of an app or a server, and then
// every agent's report, asks for a step, and a step reads every server
// record and every host's keys from etcd; at 10,000 hosts that read, made
// again and again while the acknowledgements of one change came in, cost
// more than the change itself.
func (c *controller) stepRotations(ctx context.Context, since time.Time) {
	if sn, _, err := c.mirror.Read(ctx, mirrorWait); err == nil && !rotationAsked(sn, c.hub.keyGenerations()) {
		c.rotating.Store(false) // as rotationStep does when nothing is asked
		return
	}
	if err := c.rotationStep(ctx, time.Now(), since); err != nil && ctx.Err() == nil {
		c.log.Warn("key rotation step", "err", err)
	}
}

// rotationAsked reports whether rotationStep may have something to do:
// a server whose record holds a rotation, or whose asked key generation is
// above the one its agent last reported (reported; a server missing from
// it has reported none). It never says no when rotationStep would start
// or advance a rotation: rotationStep starts one only for a server whose
// generation is above its reported one, and advances only a recorded one.
func rotationAsked(sn *store.Snapshot, reported map[string]int64) bool {
	for i := range sn.Servers {
		r := &sn.Servers[i]
		if r.Revoked {
			continue
		}
		if r.Server.Rotation != nil || r.Server.KeyGeneration > reported[r.Server.Name] {
			return true
		}
	}
	return false
}

// tick looks at the fleet between watch events, from one snapshot:
// heartbeats are not watched here (the hub mirrors them), and a change of
// the down set is what needs a compile; scheduled key rotations are due by
// time alone.
func (c *controller) tick(ctx context.Context, since, now time.Time) {
	sn, _, err := c.read(ctx)
	if err != nil {
		return
	}
	_, states := fleet(sn, c.hub.lastSeen(), now, since, c.timeout)
	c.mu.Lock()
	downChanged := downKey(states) != c.lastDown
	c.mu.Unlock()
	if downChanged || c.moveDue(now) || c.hub.schemaNews.Swap(false) && c.schemaChanged(c.hub.schemas()) {
		c.trigger()
	}
	if c.keyRotation > 0 && now.Sub(c.lastRotateCheck) >= c.rotateCheckEvery() {
		c.lastRotateCheck = now
		c.rotateKeys(ctx, sn, states, now)
	}
}

// schemaChanged reports whether an agent's reported schema now asks for
// another encoding of its host's state than the one last written (an
// agent upgraded to read route groups, or replaced by an older one): the
// reconcile then writes it again.
func (c *controller) schemaChanged(schemas map[string]string) bool {
	for name, e := range c.encoded {
		if e.state.WrittenAs(schemas[name]) != e.form {
			return true
		}
	}
	return false
}

// rotateCheckEvery is how often scheduled key rotations are looked for.
func (c *controller) rotateCheckEvery() time.Duration {
	return min(max(c.keyRotation/20, 100*time.Millisecond), 10*time.Second)
}

// rotateKeys asks for a new WireGuard key on the server whose key is the
// oldest, if it is older than keyRotation and no other rotation is under
// way: one server at a time, so that each rotation's short gap (its
// encrypted paths are down until its peers hold the new key) touches only
// that server's paths. Servers that are down are left alone (their agent
// could not answer) and do not hold the others back.
func (c *controller) rotateKeys(ctx context.Context, sn *store.Snapshot, states map[string]string, now time.Time) {
	var oldest *store.ServerRecord
	for i := range sn.Servers {
		r := &sn.Servers[i]
		name := r.Server.Name
		if r.Revoked || states[name] == spec.ServerDown {
			continue
		}
		v := c.hub.view(name)
		if v.LastSeen.IsZero() {
			continue // no status yet: nothing to rotate from
		}
		if r.Server.KeyGeneration > v.KeyGeneration {
			return // a rotation is under way
		}
		if now.Sub(r.KeySince()) >= c.keyRotation && (oldest == nil || r.KeySince().Before(oldest.KeySince())) {
			oldest = r
		}
	}
	if oldest == nil {
		return
	}
	age := now.Sub(oldest.KeySince()).Round(time.Second)
	why := fmt.Sprintf(" (scheduled: the key is %s old, the rotation interval is %s)", age, c.keyRotation)
	if err := askKeyRotation(ctx, c.st, oldest.Server.Name, "controller", why); err != nil {
		c.log.Warn("scheduled key rotation", "server", oldest.Server.Name, "err", err)
		return
	}
	c.log.Info("scheduled key rotation", "server", oldest.Server.Name, "keyAge", age)
	c.kickRotation()
}

func (c *controller) checkEvery() time.Duration {
	return min(max(c.timeout/10, 50*time.Millisecond), time.Second)
}

// anyDown reports whether the last compile saw a server down.
func (c *controller) anyDown() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastDown != "" && c.lastDown != "[]"
}

func downKey(states map[string]string) string {
	down := []string{}
	for name, s := range states {
		if s == spec.ServerDown {
			down = append(down, name)
		}
	}
	sort.Strings(down)
	b, _ := json.Marshal(down)
	return string(b)
}

// fleet is the compiler's view of the servers: removed ones left out, and
// those silent for longer than timeout marked down. A server's silence
// counts from its last status, or its join if it never reported, but never
// from before since (the controller's start): after an outage of the
// control plane every agent gets a full timeout to report again.
func fleet(sn *store.Snapshot, seen map[string]time.Time, now, since time.Time, timeout time.Duration) ([]spec.Server, map[string]string) {
	var servers []spec.Server
	states := make(map[string]string, len(sn.Servers))
	for _, r := range sn.Servers {
		name := r.Server.Name
		if r.Revoked {
			states[name] = api.ServerRevoked
			continue
		}
		s := r.Server
		spec.SetServerDefaults(&s)
		last := seen[name]
		if last.IsZero() {
			last = r.JoinedAt
		}
		if last.Before(since) {
			last = since
		}
		if now.Sub(last) > timeout {
			s.State = spec.ServerDown
		}
		states[name] = s.State
		servers = append(servers, s)
	}
	return servers, states
}

func compileInput(sn *store.Snapshot, apps []spec.App, servers []spec.Server) compile.Input {
	// Pending: a task that fits nowhere waits (pending.go) instead of
	// failing the compile for every app and every host.
	return compile.Input{Apps: apps, Servers: servers, Current: sn.Assignments(), Networks: sn.Networks(), Pending: true}
}

func specs(recs []store.AppRecord) []spec.App {
	out := make([]spec.App, len(recs))
	for i, r := range recs {
		out[i] = r.App
	}
	return out
}

// reconcile compiles the stored state and writes what changed: a host's
// desired state gets a new revision only when its bytes differ.
func (c *controller) reconcile(ctx context.Context, guard []clientv3.Cmp, since time.Time) error {
	sn, hosts, err := c.read(ctx)
	if err != nil {
		return err
	}
	seen, now := c.hub.lastSeen(), time.Now()
	servers, states := fleet(sn, seen, now, since, c.timeout)
	c.m.setHostStates(states)
	start := time.Now()
	in := compileInput(sn, specs(sn.Apps), servers)
	plan, err := c.cache.Compile(in)
	c.m.compileSeconds.Observe(time.Since(start).Seconds())
	c.mu.Lock()
	prevDown := c.lastDown
	c.lastDown = downKey(states)
	c.mu.Unlock()
	c.noteDownChanges(ctx, prevDown, states, sn, seen, now, since)
	if err != nil {
		// Keep the last good state: agents go on with what they have.
		c.noteCompileError(ctx, err)
		c.reconciles.Add(1)
		return nil
	}
	c.mu.Lock()
	c.lastError = ""
	c.mu.Unlock()

	// Tasks leaving a draining server move make-before-break: until the
	// move is done the hosts get the states of its phase and the
	// placement keeps the tasks where they run.
	mv, err := c.stepMove(ctx, guard, sn, hosts, states, in, plan)
	if err != nil {
		return err
	}
	plan = mv.place

	var writes []store.DesiredWrite
	inPlan := map[string]bool{}
	encoded := make(map[string]encodedHost, len(mv.hosts))
	schemas := c.hub.schemas() // as the agents reported them
	for i := range mv.hosts {
		hs := &mv.hosts[i]
		inPlan[hs.Host] = true
		old := hosts[hs.Host]
		// Route groups (schema 1.5) only to an agent that reported it
		// reads them; today's expanded routes to every other (fail
		// closed: an older agent would ignore the groups and route
		// nothing).
		schema := schemas[hs.Host]
		// Likewise a derived state (schema 1.6: peers and VXLAN entries
		// without their lists) only to an agent that reads 1.6; the lists
		// in full to every other.
		form := hs.WrittenAs(schema)
		var b []byte
		if e, ok := c.encoded[hs.Host]; ok && e.state.Same(hs) && e.form == form {
			b = e.data
		} else {
			if b, err = hs.EncodeFor(schema); err != nil { // json.Marshal(hs or its expansion), byte for byte
				return fmt.Errorf("encode desired state of %s: %w", hs.Host, err)
			}
			c.hostEncodes.Add(1)
		}
		if old != nil && bytes.Equal(old.Desired, b) {
			// Keep the stored bytes (the same): the next comparison is
			// then of one slice with itself.
			encoded[hs.Host] = encodedHost{*hs, old.Desired, form}
			continue
		}
		encoded[hs.Host] = encodedHost{*hs, b, form}
		var prev int64
		if old != nil {
			prev = old.DesiredRevision
		}
		writes = append(writes, store.DesiredWrite{Host: hs.Host, Data: b, Prev: prev})
	}
	names := make([]string, 0, len(hosts))
	for name := range hosts {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if h := hosts[name]; !inPlan[name] && h.Desired != nil {
			writes = append(writes, store.DesiredWrite{Host: name, Prev: h.DesiredRevision})
		}
	}
	c.encoded = encoded
	n, err := c.st.WriteDesired(ctx, guard, writes)
	c.m.revisions.Add(float64(n))
	if err != nil {
		return err
	}
	moved, err := c.writePlacement(ctx, guard, sn, plan)
	if err != nil {
		return err
	}
	c.notePending(ctx, sn, plan)
	perServer := map[string]int{}
	for t := range plan.Tasks.All() {
		perServer[t.Server]++
	}
	c.noteDrained(ctx, sn, states, perServer)
	if len(writes) > 0 || moved > 0 {
		msg := fmt.Sprintf("%d tasks placed (%d new or moved), %d host desired states updated", plan.Tasks.Len(), moved, len(writes))
		c.log.Info("placement updated", "tasks", plan.Tasks.Len(), "moved", moved, "hosts", len(writes))
		if err := c.st.AppendEvent(ctx, api.Event{Who: "controller", Action: "placement.update", Message: msg}); err != nil {
			c.log.Warn("record event", "err", err)
		}
	}
	c.reconciles.Add(1)
	return nil
}

// mirrorWait bounds how long a reconcile waits for the mirror to hold
// this server's last write before it reads etcd instead.
const mirrorWait = 5 * time.Second

// read is the state a reconcile works from: the mirror's, or etcd's when
// the mirror is behind (a broken watch), which is logged.
func (c *controller) read(ctx context.Context) (*store.Snapshot, map[string]*store.HostKeys, error) {
	sn, hosts, err := c.mirror.Read(ctx, mirrorWait)
	if err == nil {
		return sn, hosts, nil
	}
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	c.log.Warn("reading the state from etcd: the mirror is behind", "err", err)
	if sn, err = c.st.Snapshot(ctx); err != nil {
		return nil, nil, err
	}
	if hosts, err = c.st.Hosts(ctx); err != nil {
		return nil, nil, err
	}
	return sn, hosts, nil
}

func (c *controller) noteCompileError(ctx context.Context, err error) {
	msg := err.Error()
	c.mu.Lock()
	same := msg == c.lastError
	c.lastError = msg
	c.mu.Unlock()
	if same {
		return
	}
	c.log.Error("compile failed; keeping the last desired states", "err", err)
	if e := c.st.AppendEvent(ctx, api.Event{Who: "controller", Action: "compile.error", Message: msg}); e != nil {
		c.log.Warn("record event", "err", e)
	}
}

// writePlacement stores each app's tasks and paths where they changed, and
// returns how many tasks are new or on another server than before.
func (c *controller) writePlacement(ctx context.Context, guard []clientv3.Cmp, sn *store.Snapshot, plan *compile.Plan) (int, error) {
	byApp := map[string]*store.AppPlacement{}
	get := func(app string) *store.AppPlacement {
		p := byApp[app]
		if p == nil {
			p = &store.AppPlacement{App: app, Tasks: []compile.Task{}}
			byApp[app] = p
		}
		return p
	}
	for _, n := range plan.Networks {
		get(n.App).Network = n.Network
	}
	for _, ts := range plan.Tasks.Apps() {
		// Shared with the plan, which nothing changes (an unchanged
		// app's list is the last plan's, through the compiler's cache).
		get(ts[0].App).Tasks = ts
	}
	for _, t := range plan.Pending {
		p := get(t.App)
		p.Pending = append(p.Pending, t)
	}
	for _, ap := range plan.Paths.Apps() {
		// Shared with the plan, which nothing changes.
		get(ap.App).Paths = ap
	}
	old := map[string]store.AppPlacement{}
	where := map[string]string{}
	for _, p := range sn.Placement {
		old[p.App] = p
		for _, t := range p.Tasks {
			where[t.ID] = t.Server
		}
	}
	moved := 0
	for t := range plan.Tasks.All() {
		if where[t.ID] != t.Server {
			moved++
		}
	}
	var puts []store.EncodedPlacement
	for app, p := range byApp {
		nb, err := p.Encode()
		if err != nil {
			return moved, fmt.Errorf("encode placement of %s: %w", app, err)
		}
		if o, ok := old[app]; ok && bytes.Equal(c.placed.encoded(o), nb) {
			continue
		}
		puts = append(puts, store.EncodedPlacement{App: app, Data: nb})
	}
	sort.Slice(puts, func(i, j int) bool { return puts[i].App < puts[j].App })
	var deletes []string
	for app := range old {
		if byApp[app] == nil {
			deletes = append(deletes, app)
		}
	}
	sort.Strings(deletes)
	rev, err := c.st.WriteEncodedPlacement(ctx, guard, puts, deletes)
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			return moved, fmt.Errorf("placement write refused (leadership lost?): %w", err)
		}
		return moved, err
	}
	if len(puts)+len(deletes) <= store.MaxOpsPerTxn {
		// One transaction: rev is each written record's mod revision.
		for _, p := range puts {
			c.placed.remember(p.App, rev, p.Data)
		}
	}
	return moved, nil
}

// placedCache keeps, per app, the JSON of the placement record at one
// mod revision, as the controller wrote or last encoded it: comparing a
// new placement with the stored one then encodes only the new one (an
// app of 10,000 tasks has a placement record of megabytes, compared on
// every reconcile). An entry is used only for the record at its own
// revision: a record written by anyone else (another leader) has another
// revision and is encoded afresh.
type placedCache struct {
	mu    sync.Mutex
	byApp map[string]placedEntry
}

type placedEntry struct {
	rev  int64
	data []byte
}

// encoded is the JSON of o, the stored record at o.Revision.
func (p *placedCache) encoded(o store.AppPlacement) []byte {
	p.mu.Lock()
	e, ok := p.byApp[o.App]
	p.mu.Unlock()
	if ok && e.rev == o.Revision && o.Revision != 0 {
		return e.data
	}
	b, err := o.Encode()
	if err != nil {
		return nil // compares unequal: written again
	}
	p.remember(o.App, o.Revision, b)
	return b
}

func (p *placedCache) remember(app string, rev int64, data []byte) {
	if rev == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byApp == nil {
		p.byApp = map[string]placedEntry{}
	}
	p.byApp[app] = placedEntry{rev: rev, data: data}
}
