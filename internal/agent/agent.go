// Package agent is the reconcile loop that runs on every server: it joins
// the cluster once (join token, CSR, then mTLS), long-polls its host's
// desired state by revision, keeps the last one on disk and drives the guest
// runtime and the data plane to it, repairs drift periodically, reports
// status, and serves a small local API (logs, probes, status, metrics) to
// the server.
//
// The agent fails static: once a desired state has been received it is
// applied again at every start, before the server is asked anything, and a
// server outage changes nothing on the host. Stopping the agent leaves
// guests and data plane in place; only Cleanup removes them.
//
// The control channel to the server must run on the underlay, never
// through corw0 or corv0, which the agent itself configures: a tunnel that
// needs the agent to be repaired must not carry the agent's own traffic.
// The CLI refuses to start when the route to the server goes through a
// tunnel device, and the agent refuses any desired state that would route a
// server address into a tunnel.
package agent

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/artifact"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/version"
)

// DefaultStateDir is where `corridor agent` keeps its state unless told.
const DefaultStateDir = "/var/lib/corridor/agent"

// Defaults of Config's intervals.
const (
	DefaultPollWait       = 60 * time.Second
	DefaultRepairInterval = 30 * time.Second
	DefaultStatusInterval = 5 * time.Second
	// DefaultMoveGrace is long enough for the requests in flight to a
	// moving task to end, and short enough that a client whose SYN is
	// held sends it again to the new copy on its second try (Linux sends
	// the first retry after 1 s, the second 2 s later).
	DefaultMoveGrace  = 2 * time.Second
	DefaultBackoffMin = 500 * time.Millisecond
	DefaultBackoffMax = 30 * time.Second
	// DefaultArtifactGCInterval: how often the artifacts no guest uses
	// and none has used for the cache's UnusedFor are removed.
	DefaultArtifactGCInterval = 10 * time.Minute

	// reconcileTimeout bounds one reconcile pass. A pass is not cut short
	// by shutdown: a half-applied data plane is worse than a late exit.
	reconcileTimeout = 2 * time.Minute
	statusTimeout    = 10 * time.Second
)

// Config is what an agent is and what it drives.
type Config struct {
	Name     string
	StateDir string
	// Address is the host's underlay address, on UnderlayIface.
	Address       netip.Addr
	UnderlayIface string
	WireGuardPort int
	Capacity      spec.Resources
	Labels        map[string]string

	// JoinToken and Bootstrap are used only when the state directory
	// holds no usable identity: Bootstrap is a client that trusts the
	// server (by the cluster CA) and JoinToken goes in the join request.
	JoinToken string
	Bootstrap ControlPlane
	// Join bounds the join and names its settings for the hints of a
	// failed join (see JoinOptions).
	Join JoinOptions
	// Connect makes the mTLS client from the agent's identity.
	Connect func(*Identity) (ControlPlane, error)

	Guests    Guests
	Dataplane Dataplane
	// Artifacts, when set, is the cache of task programs delivered as
	// artifacts (artifacts.go); nil: a guest naming one is not started.
	// Run removes the artifacts no guest uses every ArtifactGCInterval
	// (DefaultArtifactGCInterval when 0), and once once the stored state
	// is loaded.
	Artifacts          *artifact.Cache
	ArtifactGCInterval time.Duration

	// ServerAddrs are the server's underlay addresses. A desired state
	// that would send any of them into a tunnel is refused.
	ServerAddrs []netip.Addr
	// Runtimes are the guest runtimes this host runs (nil: netns and vm);
	// a state with a guest of another runtime is refused whole.
	Runtimes []string
	// ValidateDataplane checks a state the way the data plane would,
	// without touching the kernel (dataplane.Validate); nil skips it. It is
	// hoststate.Options.Dataplane of the agent's one validation.
	ValidateDataplane func(compile.HostState) error

	// Listener, when set, serves the local API (mTLS, see APITLSConfig).
	Listener net.Listener
	// MetricsListener, when set, serves GET /metrics alone in plain HTTP,
	// for Prometheus (docs/metrics.md).
	MetricsListener net.Listener
	// Logs and Probe back the local API; nil answers 501.
	Logs  LogsFunc
	Probe ProbeFunc

	PollWait       time.Duration
	RepairInterval time.Duration
	StatusInterval time.Duration
	// FenceAfter > 0 fences the host (fence.go) once no status report has
	// been acknowledged for that long; 0 never fences (fail static).
	FenceAfter time.Duration
	// MoveGrace bounds how long a state that holds addresses of moving
	// tasks (hoststate.State.Hold) waits for the TCP connections still
	// open to them before it is reported applied; DefaultMoveGrace when 0.
	MoveGrace  time.Duration
	BackoffMin time.Duration
	BackoffMax time.Duration

	Logger *slog.Logger
	Now    func() time.Time
}

func (c *Config) defaults() error {
	if c.Name == "" {
		return errors.New("agent: name is empty")
	}
	if c.StateDir == "" {
		return errors.New("agent: state directory is empty")
	}
	if c.Guests == nil || c.Dataplane == nil || c.Connect == nil {
		return errors.New("agent: Guests, Dataplane and Connect are required")
	}
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&c.PollWait, DefaultPollWait)
	set(&c.RepairInterval, DefaultRepairInterval)
	set(&c.StatusInterval, DefaultStatusInterval)
	set(&c.MoveGrace, DefaultMoveGrace)
	set(&c.BackoffMin, DefaultBackoffMin)
	set(&c.BackoffMax, DefaultBackoffMax)
	set(&c.ArtifactGCInterval, DefaultArtifactGCInterval)
	if c.WireGuardPort == 0 {
		c.WireGuardPort = compile.DefaultWireGuardPort
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Artifacts != nil {
		c.Guests = newArtifactGuests(c.Guests, c.Artifacts, c.Now)
	}
	return nil
}

// Agent is one host's agent. Make it with New and start it with Run.
type Agent struct {
	cfg Config
	log *slog.Logger
	m   *metrics

	// wake tells the reconcile loop that target changed; kick tells the
	// status loop to report now. Both hold at most one pending signal.
	wake chan struct{}
	kick chan struct{}

	// reconcileMu serialises reconcile passes (updates, repairs, the
	// fail-static pass at start).
	reconcileMu sync.Mutex
	// held are the addresses of moving tasks the last applied state held
	// (State.Hold); reconcileMu guards it.
	held []netip.Addr

	mu         sync.Mutex
	target     *api.DesiredState // the newest state received or loaded
	applied    int64             // revision last applied without error
	lastErrors []string          // errors of the last reconcile pass
	refused    int64             // newest revision refused as invalid
	refusedErr string            // why, until a newer state is accepted
	notReady   string            // why the data plane failed in the last pass ("": it did not)
	caKey      crypto.PublicKey  // verifies desired states (the cluster CA's key)
	digest     string            // digest of target (verified)
	appliedDig string            // digest of the state last applied without error
	lastAck    time.Time         // last status report acknowledged (the lease)
	fenced     string            // why the host is fenced ("": it is not)
	fencedAt   time.Time
	cp         ControlPlane // the mTLS client of the current identity
	id         *Identity    // the current identity (renewed in place)
	// ackWant is the revision whose first completed reconcile pass the
	// poll loop reports itself, in its next long-poll (0: none); ackDone
	// says that pass completed, and acked carries the news.
	ackWant int64
	ackDone bool
	acked   chan struct{}
}

// controlPlane is the client of the current identity.
func (a *Agent) controlPlane() ControlPlane {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cp
}

func (a *Agent) identity() *Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id
}

// New checks cfg and makes an agent.
func New(cfg Config) (*Agent, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	return &Agent{
		cfg:   cfg,
		log:   cfg.Logger.With("agent", cfg.Name),
		m:     newMetrics(),
		wake:  make(chan struct{}, 1),
		kick:  make(chan struct{}, 1),
		acked: make(chan struct{}, 1),
	}, nil
}

// Run runs the agent until ctx is done. It returns nil on shutdown, and an
// error only when the agent cannot work at all (no identity and no way to
// join). Shutdown stops the loops and leaves guests and data plane alone.
func (a *Agent) Run(ctx context.Context) error {
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("agent: state directory: %w", err)
	}

	// Fail static: serve the last state received before asking the server
	// anything, so that an agent restarted during a server outage puts the
	// host back exactly as it was.
	a.loadStateKey()
	a.loadFence()
	start := a.cfg.Now()
	ds, ok, err := LoadDesired(a.cfg.StateDir)
	var digest string
	if ok && err == nil {
		digest, err = a.checkDesired(&ds, sourceDisk)
		if err != nil {
			// Only a state the control plane signed is applied: one
			// edited on disk must not reach the kernel. Nothing is
			// applied; the host stays as it is until the server answers.
			a.log.Error("stored desired state refused; applying nothing until the server answers", "revision", ds.Revision, "err", err)
			a.refuseStored(err)
			ok = false
		}
	}
	switch {
	case err != nil:
		// A torn file cannot happen (atomic writes); a bad one is
		// replaced by the server's next answer.
		a.log.Error("ignoring stored desired state", "err", err)
	case ok && ds.State.Host != "" && ds.State.Host != a.cfg.Name:
		a.log.Error("ignoring stored desired state of another host", "host", ds.State.Host)
	case ok:
		a.log.Info("applying stored desired state", "revision", ds.Revision, "digest", digest)
		a.setTarget(ds, digest)
		a.reconcileTarget(ctx, "start")
	}

	// wg.Wait is deferred before cancel so that it runs after it.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() { a.reconcileLoop(ctx) })
	wg.Go(func() { a.handshakeLoop(ctx) })
	// Started after the stored state is loaded: what it names is in use
	// (a VM adopted from an earlier agent still boots from its image).
	if a.cfg.Artifacts != nil {
		wg.Go(func() { a.cfg.Artifacts.Run(ctx, a.cfg.ArtifactGCInterval, a.artifactsInUse) })
	}

	id, err := a.ensureIdentity(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if err := a.setStateKey(id.CAPEM); err != nil {
		a.log.Error("the cluster CA cannot verify desired states: every state will be refused", "err", err)
	}
	cp, err := a.cfg.Connect(id)
	if err != nil {
		return fmt.Errorf("agent: control plane client: %w", err)
	}
	a.mu.Lock()
	a.cp, a.id = cp, id
	a.mu.Unlock()
	a.useArtifactStore(cp)
	wg.Go(func() { a.pollLoop(ctx) })
	wg.Go(func() { a.statusLoop(ctx) })
	wg.Go(func() { a.taskWatch(ctx) })
	wg.Go(func() { a.renewLoop(ctx) })
	if a.cfg.FenceAfter > 0 {
		wg.Go(func() { a.fenceLoop(ctx, start) })
	}
	if a.cfg.Listener != nil {
		wg.Go(func() { a.serveAPI(ctx) })
	}
	if a.cfg.MetricsListener != nil {
		wg.Go(func() { a.serveMetrics(ctx) })
	}
	<-ctx.Done()
	a.log.Info("agent stopping; guests and data plane are left running")
	return nil
}

// pollLoop long-polls the desired state. Every new revision is written to
// disk before the reconcile loop is told about it, so that what the host
// runs is always what a restart would restore.
//
// The report that a new revision is applied rides on the next long-poll
// when the server takes it (statusPoller, POST .../desired): after
// accepting a state the loop waits, at most ackWait, for its reconcile
// pass, then polls with the status, so that a change costs the server two
// requests per host, not three. Against a server that does not know that
// request (an older one) it polls as before for carryRetry, and the status
// loop reports.
func (a *Agent) pollLoop(ctx context.Context) {
	bo := backoff{Min: a.cfg.BackoffMin, Max: a.cfg.BackoffMax}
	var carryOff time.Time // no status on the long-poll until then
	var ack int64          // the revision whose report the next poll carries
	for ctx.Err() == nil {
		index := a.targetRevision()
		cp := a.controlPlane()
		sp, canCarry := cp.(statusPoller)
		carry := false
		if ack != 0 {
			done := a.awaitAck(ctx)
			carry = done && canCarry
			if done && !canCarry {
				signal(a.kick) // the client changed (a renewal): report separately
			}
		}
		ack = 0
		start := time.Now()
		var ds api.DesiredState
		var err error
		if carry {
			st := a.Status(ctx)
			stored := false
			ds, err = sp.DesiredWithStatus(ctx, a.cfg.Name, index, a.cfg.PollWait, st, func() {
				stored = true
				a.renewed(start)
			})
			if !stored {
				signal(a.kick) // the status loop reports it
			}
			if errors.Is(err, api.ErrPollStatusUnsupported) {
				carryOff = time.Now().Add(carryRetry)
				a.log.Info("the server does not take the status with the long-poll (an older server): reporting separately", "err", err)
				continue
			}
		} else {
			ds, err = cp.Desired(ctx, a.cfg.Name, index, a.cfg.PollWait)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			wait := bo.next()
			a.log.Warn("desired state poll failed", "err", err, "retryIn", wait.Round(time.Millisecond))
			sleepCtx(ctx, wait)
			continue
		}
		if ds.Revision == index {
			// The long poll ran out with nothing new. One that comes back
			// early with nothing new (a proxy cutting it short, a server
			// that does not block) must not turn into a busy loop.
			if time.Since(start) < a.cfg.PollWait/2 {
				sleepCtx(ctx, bo.next())
			} else {
				bo.reset()
			}
			continue
		}
		bo.reset()
		if ds.Revision < index {
			// Revisions only grow; a smaller one means the server's
			// store was replaced. Its answer is still the truth.
			a.log.Warn("desired revision went backwards", "had", index, "got", ds.Revision)
		}
		if canCarry && time.Now().After(carryOff) {
			// Before the reconcile loop hears of the state: its pass
			// must find the wish.
			a.wantAck(ds.Revision)
			ack = ds.Revision
		}
		if err := a.accept(ds); err != nil {
			a.wantAck(0)
			ack = 0
			sleepCtx(ctx, bo.next())
			continue
		}
	}
}

// statusPoller is a control plane whose long-poll can carry the agent's
// status (*api.Client, *Failover): see pollLoop.
type statusPoller interface {
	DesiredWithStatus(ctx context.Context, name string, index int64, wait time.Duration, st api.Status, stored func()) (api.DesiredState, error)
}

const (
	// ackWait bounds how long the poll loop waits for a new state's
	// reconcile pass to carry its report; a longer pass is reported by
	// the status loop, and the poll goes on without it.
	ackWait = 10 * time.Second
	// carryRetry is how long the agent reports separately after a server
	// refused a status on the long-poll, before it tries again (the
	// server may have been upgraded, or another one answers).
	carryRetry = 10 * time.Minute
)

// wantAck makes rev the revision whose reconcile pass the poll loop
// reports (0: none).
func (a *Agent) wantAck(rev int64) {
	a.mu.Lock()
	a.ackWant, a.ackDone = rev, false
	a.mu.Unlock()
	select {
	case <-a.acked: // an old signal
	default:
	}
}

// awaitAck waits, at most ackWait, for the pass wantAck asked for, and
// reports whether it completed; either way the wish is withdrawn, so a
// pass that ends later is reported by the status loop.
func (a *Agent) awaitAck(ctx context.Context) bool {
	t := time.NewTimer(ackWait)
	defer t.Stop()
	select {
	case <-a.acked:
	case <-t.C:
	case <-ctx.Done():
	}
	a.mu.Lock()
	done := a.ackDone
	a.ackWant, a.ackDone = 0, false
	a.mu.Unlock()
	return done && ctx.Err() == nil
}

// accept checks a desired state from the server, stores it and makes it
// the target; a state that fails the checks is refused (the host stays on
// its last good state, says why in its status, and waits for a newer one).
func (a *Agent) accept(ds api.DesiredState) error {
	digest, err := a.checkDesired(&ds, sourceServer)
	if err != nil {
		a.log.Error("desired state refused; keeping the last good state", "revision", ds.Revision, "err", err)
		a.refuse(ds.Revision, err)
		return err
	}
	a.log.Info("new desired state", "revision", ds.Revision, "guests", len(ds.State.Guests), "peers", len(ds.State.Peers))
	if err := SaveDesired(a.cfg.StateDir, ds); err != nil {
		// Apply anyway: the server's newest state may revoke a path,
		// and keeping it open because a disk is full is worse than
		// restoring an older state after a restart.
		a.log.Error("could not persist desired state; applying it anyway", "err", err, "revision", ds.Revision)
	}
	a.setTarget(ds, digest)
	signal(a.wake)
	return nil
}

// reconcileLoop applies each new target, and the current one again every
// RepairInterval to undo changes made behind the agent's back.
func (a *Agent) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.RepairInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
			a.reconcileTarget(ctx, "update")
		case <-t.C:
			a.reconcileTarget(ctx, "repair")
		}
	}
}

// handshakeInterval is how often the agent drives new WireGuard peers'
// first handshakes (dataplane.RetryStalledHandshakes); it adds at most this
// much to a new encrypted path's set-up when an initiation was lost.
const handshakeInterval = 100 * time.Millisecond

// handshakeLoop drives the first handshake of new WireGuard peers, so that
// a new encrypted path carries its first byte within about a second even
// when its first initiation was lost, rather than after WireGuard's own
// 5 s retry, and tells the server as soon as a path is up.
func (a *Agent) handshakeLoop(ctx context.Context) {
	t := time.NewTicker(handshakeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			hc, err := a.cfg.Dataplane.RetryStalledHandshakes(now)
			if err != nil {
				a.log.Debug("handshake check", "err", err)
				continue
			}
			a.m.handshakeRetries.Add(float64(len(hc.Retried)))
			if len(hc.Moved) > 0 {
				// A key rotation moved routes between the WireGuard
				// devices: the server moves the rotation on once it knows.
				a.log.Info("WireGuard routes moved (key rotation)", "servers", strings.Join(hc.Moved, ", "))
				signal(a.kick)
			}
			if len(hc.Completed) > 0 {
				// New paths are up: tell the server now, not at the
				// next status tick, so that "get paths" shows them.
				a.log.Info("WireGuard peers up", "servers", strings.Join(hc.Completed, ", "))
				signal(a.kick)
			}
		}
	}
}

// reconcileTarget runs one reconcile pass towards the current target.
func (a *Agent) reconcileTarget(ctx context.Context, why string) {
	a.reconcileMu.Lock()
	defer a.reconcileMu.Unlock()
	a.mu.Lock()
	target, digest, fenced := a.target, a.digest, a.fenced != ""
	a.mu.Unlock()
	if target == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reconcileTimeout)
	defer cancel()

	st := target.State
	if fenced {
		st = fencedState(st)
		why += ", fenced"
	}
	start := time.Now()
	errs := a.reconcile(ctx, st)
	if len(errs) == 0 && len(st.Hold) > 0 && target.Revision != a.AppliedRevision() {
		a.awaitHold(ctx, st.Hold)
	}
	if len(errs) == 0 {
		a.releaseHold(st.Hold)
	}
	elapsed := time.Since(start)
	a.m.reconcileDuration.Observe(elapsed.Seconds())

	msgs := make([]string, len(errs))
	for i, err := range errs {
		msgs[i] = err.Error()
	}
	a.mu.Lock()
	a.lastErrors = msgs
	if len(errs) == 0 {
		a.applied, a.appliedDig = target.Revision, digest
	}
	// The poll loop reports this pass with its next long-poll when it
	// waits for it; otherwise the status loop reports.
	carried := a.ackWant != 0 && a.ackWant == target.Revision && !a.ackDone
	if carried {
		a.ackDone = true
	}
	a.mu.Unlock()
	if len(errs) > 0 {
		a.m.reconcileErrors.Inc()
		a.log.Error("reconcile incomplete", "why", why, "revision", target.Revision, "errors", len(errs), "err", errors.Join(errs...), "took", elapsed)
	} else {
		a.m.appliedRevision.Set(float64(target.Revision))
		level := slog.LevelInfo
		if why == "repair" {
			level = slog.LevelDebug
		}
		a.log.Log(ctx, level, "reconciled", "why", why, "revision", target.Revision, "took", elapsed)
	}
	if carried {
		signal(a.acked)
	} else {
		signal(a.kick)
	}
}

// reconcile drives guests and data plane to st and returns every error met;
// one failing guest does not stop the others.
//
// Order, chosen to fail closed:
//  1. Remove guests no longer desired. Their allow rules are still in the
//     firewall at this point, so they are stopped first, and their
//     addresses are free before a new guest may take them.
//  2. Apply the data plane for the whole new state: firewall (default deny
//     plus the new guests' rules), routes, peers, VXLAN. Rules refer to
//     guest addresses and interface names, which need not exist yet.
//  3. Ensure the desired guests. A new guest's program starts only when
//     the firewall and routes for its address are in place, so its first
//     packet meets the policy, never an open host.
//
// When the data plane cannot be applied, new guests are not started (on a
// host applying its first state there may be no firewall at all); guests
// that already run are kept, their old rules still hold.
func (a *Agent) reconcile(ctx context.Context, st compile.HostState) []error {
	if err := a.validateState(st); err != nil {
		return []error{err}
	}
	var errs []error
	// The next key of a hitless rotation first (made here, never sent:
	// only its public half is reported), so that this Apply brings up the
	// second device with it; the Apply of a state that holds it as the
	// current key commits it.
	if _, gen := a.cfg.Dataplane.Key(); st.KeyGeneration > gen {
		_, nextGen, ok := a.cfg.Dataplane.NextKey()
		if !ok || st.KeyGeneration > nextGen {
			if err := a.cfg.Dataplane.PrepareKey(st.KeyGeneration); err != nil {
				errs = append(errs, fmt.Errorf("make the next WireGuard key, generation %d: %w", st.KeyGeneration, err))
			} else {
				a.m.keyRotations.Inc() // the data plane logs the new key
			}
		}
	}
	existing := map[string]bool{}
	tasks, err := a.cfg.Guests.List(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("list guests: %w", err))
	}
	for _, t := range tasks {
		existing[t] = true
	}
	desired := make(map[string]bool, len(st.Guests)+len(st.Staged))
	for _, g := range st.Guests {
		desired[g.Task] = true
	}
	for _, g := range st.Staged {
		desired[g.Task] = true
	}

	var gone []string
	for _, t := range tasks {
		if !desired[t] {
			gone = append(gone, t)
		}
	}
	errs = append(errs, removeGuests(ctx, a.cfg.Guests, gone, "removing guest no longer desired", a.log)...)

	dpErr := a.cfg.Dataplane.Apply(ctx, st)
	if dpErr != nil {
		errs = append(errs, fmt.Errorf("data plane: %w", dpErr))
	}
	a.setNotReady(dpErr)

	for _, g := range st.Guests {
		if dpErr != nil && !existing[g.Task] {
			errs = append(errs, fmt.Errorf("guest %s not started: the data plane is not in place", g.Task))
			continue
		}
		if err := a.cfg.Guests.Ensure(ctx, g); err != nil {
			errs = append(errs, fmt.Errorf("guest %s: %w", g.Task, err))
		}
	}
	// Staged copies of moving tasks start like any guest, but the data
	// plane was given none of them: their interfaces are strays to its
	// firewall (every packet dropped), and no route leads to them. The
	// state that makes one a guest routes it without restarting it (the
	// runtime's program hash does not cover being staged).
	for _, g := range st.Staged {
		if dpErr != nil && !existing[g.Task] {
			errs = append(errs, fmt.Errorf("staged guest %s not started: the data plane is not in place", g.Task))
			continue
		}
		if err := a.cfg.Guests.Ensure(ctx, g); err != nil {
			errs = append(errs, fmt.Errorf("staged guest %s: %w", g.Task, err))
		}
	}
	return errs
}

// connCounter is a data plane that counts the TCP connections still open
// to some addresses (dataplane.OpenConns).
type connCounter interface {
	OpenConns(addrs []netip.Addr) (int, error)
}

// awaitHold waits, after applying a state that holds the addresses of
// moving tasks, until no TCP connection to them is open through this host
// any more, or the move grace has passed: the control plane switches the
// addresses to their new hosts once every host has reported the state
// applied, so that no request is in flight when they switch. New
// connections to them are dropped meanwhile (their clients try again).
func (a *Agent) awaitHold(ctx context.Context, hold []netip.Addr) {
	cc, ok := a.cfg.Dataplane.(connCounter)
	if !ok {
		return
	}
	start := time.Now()
	deadline := start.Add(a.cfg.MoveGrace)
	for {
		n, err := cc.OpenConns(hold)
		switch {
		case err != nil:
			a.log.Warn("count the connections to moving tasks", "err", err)
			return
		case n == 0:
			a.log.Info("no connection left to moving tasks", "addresses", len(hold), "waited", time.Since(start).Round(time.Millisecond))
			return
		case !time.Now().Before(deadline):
			a.log.Info("move grace over: connections to moving tasks will be cut", "open", n, "grace", a.cfg.MoveGrace)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(holdPoll):
		}
	}
}

// connFlusher is a data plane that forgets the connections tracked to or
// from some addresses (dataplane.FlushConns).
type connFlusher interface {
	FlushConns(addrs []netip.Addr) (uint, error)
}

// releaseHold forgets, once a state that no longer holds a moving task's
// address is applied (its routes now lead to the new copy), every
// connection tracked for that address: conntrack recorded each with the
// old path, along which a retried SYN would be answered and lost.
// reconcileMu held.
func (a *Agent) releaseHold(hold []netip.Addr) {
	var released []netip.Addr
	for _, h := range a.held {
		if !slices.Contains(hold, h) {
			released = append(released, h)
		}
	}
	a.held = slices.Clone(hold)
	cf, ok := a.cfg.Dataplane.(connFlusher)
	if len(released) == 0 || !ok {
		return
	}
	n, err := cf.FlushConns(released)
	if err != nil {
		a.log.Warn("forget the connections of moved tasks", "err", err)
		return
	}
	a.log.Info("moved tasks switched: their tracked connections forgotten", "addresses", len(released), "connections", n)
}

// holdPoll is how often awaitHold counts the open connections.
const holdPoll = 20 * time.Millisecond

// statusLoop reports status every StatusInterval, right after each
// reconcile pass, and when new WireGuard peers come up.
func (a *Agent) statusLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.StatusInterval)
	defer t.Stop()
	failing := false
	for {
		st := a.Status(ctx)
		sent := a.cfg.Now()
		rctx, cancel := context.WithTimeout(ctx, statusTimeout)
		err := a.controlPlane().ReportStatus(rctx, a.cfg.Name, st)
		cancel()
		if err == nil {
			a.renewed(sent)
		}
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			// Logged once per outage: the poll loop already says more.
			a.log.Warn("status report failed", "err", err)
			failing = true
		case err == nil && failing:
			a.log.Info("status reports go through again")
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.kick:
		}
	}
}

// taskWatchEvery is how often taskWatch looks at the tasks' states.
const taskWatchEvery = 100 * time.Millisecond

// taskWatch reports at once when a task's state changes between reconcile
// passes (a program that got started, crashed, or was restarted by its
// supervisor), not at the next status tick: `apply --wait` and `get tasks`
// see a task running as soon as it is. It reads only the runtimes'
// in-memory states.
func (a *Agent) taskWatch(ctx context.Context) {
	t := time.NewTicker(taskWatchEvery)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		target := a.target
		a.mu.Unlock()
		if target == nil {
			continue
		}
		var b strings.Builder
		for _, g := range slices.Concat(target.State.Guests, target.State.Staged) {
			ts := a.cfg.Guests.Status(g.Task)
			fmt.Fprintf(&b, "%s=%s/%d;", g.Task, ts.State, ts.Restarts)
		}
		if now := b.String(); now != last {
			if last != "" {
				signal(a.kick)
			}
			last = now
		}
	}
}

// Status is the agent's current status report.
func (a *Agent) Status(ctx context.Context) api.Status {
	a.mu.Lock()
	target := a.target
	applied, appliedDig := a.applied, a.appliedDig
	errs := slices.Clone(a.lastErrors)
	fenced := a.fenced
	if a.refusedErr != "" && (a.target == nil || a.target.Revision < a.refused) {
		errs = append(errs, a.refusedErr)
	}
	a.mu.Unlock()

	pub, keyGen := a.cfg.Dataplane.Key()
	nextPub, nextGen, _ := a.cfg.Dataplane.NextKey()
	st := api.Status{
		NextPublicKey:     nextPub,
		NextKeyGeneration: nextGen,
		Name:              a.cfg.Name,
		Address:           addrString(a.cfg.Address),
		PublicKey:         pub,
		KeyGeneration:     keyGen,
		WireGuardPort:     a.cfg.WireGuardPort,
		Capacity:          a.cfg.Capacity,
		Labels:            a.cfg.Labels,
		AppliedRevision:   applied,
		Version:           version.Version,
		Schema:            hoststate.ReadSchema,
		AppliedDigest:     appliedDig,
		APIAddr:           a.apiAddr(),
		Errors:            errs,
		NotReady:          a.notReadyReason(),
		Fenced:            fenced,
		Time:              a.cfg.Now().UTC(),
	}
	if target != nil {
		for _, g := range target.State.Guests {
			ts := a.cfg.Guests.Status(g.Task)
			ts.Task = g.Task // the runtime may not know a guest it has not started
			st.Tasks = append(st.Tasks, ts)
		}
		for _, g := range target.State.Staged {
			ts := a.cfg.Guests.Status(g.Task)
			ts.Task, ts.Staged = g.Task, true
			st.Tasks = append(st.Tasks, ts)
		}
	}
	a.m.setGuests(st.Tasks)
	dp, err := a.cfg.Dataplane.Status(ctx)
	if err != nil {
		st.Errors = append(st.Errors, fmt.Sprintf("data plane status: %v", err))
	}
	st.Peers, st.Drops, st.WireGuardMode = dp.Peers, dp.Drops, dp.WireGuardMode
	st.FlowOffload, st.OffloadedFlows = dp.FlowOffload, dp.OffloadedFlows
	a.m.setOffload(dp.FlowOffload, dp.OffloadedFlows, dp.OffloadedEncrypted)
	if dp.OffloadedEncrypted > 0 {
		st.Errors = append(st.Errors, fmt.Sprintf("fail-closed breach: %d connections of encrypted paths offloaded to the nftables flowtable, past the check that keeps them on WireGuard", dp.OffloadedEncrypted))
	}
	a.m.paths.set(st.Peers, st.Drops)
	return st
}

// AppliedRevision is the revision last applied without error (0: none).
func (a *Agent) AppliedRevision() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.applied
}

// setTarget sets the state to apply, verified, with its digest.
func (a *Agent) setTarget(ds api.DesiredState, digest string) {
	a.mu.Lock()
	a.target, a.digest = &ds, digest
	a.mu.Unlock()
}

func (a *Agent) targetRevision() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	rev := a.refused
	if a.target != nil && a.target.Revision > rev {
		rev = a.target.Revision
	}
	return rev
}

// refuse records a refused revision, so that the long poll waits for a
// newer one, and its reason, which the status reports until a state is
// accepted.
func (a *Agent) refuse(rev int64, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refused = rev
	a.refusedErr = fmt.Sprintf("desired state revision %d refused: %v", rev, err)
	signal(a.kick) // tell the server now, not at the next heartbeat
}

// refuseStored records why the stored state was refused at start. Its
// revision is not recorded: the server's state of the same revision is
// still wanted (a file edited in place keeps its revision).
func (a *Agent) refuseStored(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refusedErr = fmt.Sprintf("stored desired state (%s) refused, nothing applied from it: %v", DesiredFile, err)
}

// signal leaves one pending signal on c without blocking.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// apiAddr is where the server reaches the local API: the listener's port on
// the underlay address when the listener is bound to every address.
func (a *Agent) apiAddr() string {
	if a.cfg.Listener == nil {
		return ""
	}
	ap, err := netip.ParseAddrPort(a.cfg.Listener.Addr().String())
	if err != nil {
		return a.cfg.Listener.Addr().String()
	}
	if ap.Addr().IsUnspecified() && a.cfg.Address.IsValid() {
		ap = netip.AddrPortFrom(a.cfg.Address, ap.Port())
	}
	return ap.String()
}
