package server

import (
	"context"
	"encoding/json"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/corridor-dev/corridor/internal/store"
)

// hub mirrors the per-host keys (desired state and status) in memory from
// one etcd watch, and wakes the long-polls waiting on a host when that
// host's desired state changes. One watch for the whole fleet, one channel
// per host: a thousand waiting agents cost a thousand parked goroutines
// and nothing in etcd.
type hub struct {
	st  *store.Store
	log *slog.Logger

	mu     sync.Mutex
	hosts  map[string]*hostEntry
	closed bool
	ready  chan struct{}
	// parked counts long-polls waiting now.
	parked atomic.Int64
	// schemaNews is set when an agent reports another host-state schema
	// than before (its first report included): the controller then looks
	// whether a state must be written in the other form (schemaChanged),
	// instead of comparing every host's at each tick.
	schemaNews atomic.Bool
	// onStatus is called (without mu) for every status the watch sees;
	// news tells whether it says more than "still here": another applied
	// revision, key generation or task list than the host's last status.
	onStatus func(host string, news bool)
	// fanout, when set, observes for each host the time from a new
	// desired state seen by the watch to the host's status saying it
	// applied that revision (or a later one).
	fanout func(seconds float64)
}

type hostEntry struct {
	desired []byte // raw hoststate.State JSON; nil: none yet
	rev     int64  // mod revision of desired; 0: none
	changed chan struct{}
	// lastSeen is when the server last got a status from the host.
	lastSeen time.Time
	applied  int64
	keyGen   int64  // generation of the host's WireGuard key, as reported
	tasks    uint64 // FNV-1a of the reported task list's JSON
	// schema is the host-state schema the agent reported it reads
	// (api.Status.Schema), "" when it reported none.
	schema string
	// pendingRev is a desired revision written while this server watched
	// and not yet reported applied, pendingSince when the watch saw it.
	pendingRev   int64
	pendingSince time.Time
}

func newHub(st *store.Store, log *slog.Logger) *hub {
	return &hub{st: st, log: log, hosts: map[string]*hostEntry{}, ready: make(chan struct{})}
}

// entry returns the host's entry, making it; mu must be held.
func (h *hub) entry(host string) *hostEntry {
	e := h.hosts[host]
	if e == nil {
		e = &hostEntry{changed: make(chan struct{})}
		h.hosts[host] = e
	}
	return e
}

// run keeps the mirror in step until ctx ends. After a broken watch (etcd
// compaction, leader loss) it reloads everything and watches again.
func (h *hub) run(ctx context.Context) {
	for ctx.Err() == nil {
		rev, err := h.load(ctx)
		if err != nil {
			h.log.Warn("load host keys", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		h.watch(ctx, rev)
	}
}

func (h *hub) load(ctx context.Context) (int64, error) {
	resp, err := h.st.Client().Get(ctx, h.st.HostsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	seen := map[string]bool{}
	h.mu.Lock()
	for _, kv := range resp.Kvs {
		host, kind, ok := h.st.ParseHostKey(string(kv.Key))
		if !ok {
			continue
		}
		if store.IsDesired(kind) {
			seen[host] = true
			h.setDesired(host, kv.Value, kv.ModRevision)
		} else {
			h.setStatus(host, kv.Value)
		}
	}
	// Hosts whose desired state vanished while the watch was down.
	for name, e := range h.hosts {
		if !seen[name] && e.rev != 0 {
			h.setDesired(name, nil, 0)
		}
	}
	h.mu.Unlock()
	select {
	case <-h.ready:
	default:
		close(h.ready)
	}
	return resp.Header.Revision, nil
}

func (h *hub) watch(ctx context.Context, rev int64) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := h.st.Client().Watch(wctx, h.st.HostsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			h.log.Warn("host watch broken; reloading", "err", err)
			return
		}
		type seen struct {
			host string
			news bool
		}
		var statuses []seen
		h.mu.Lock()
		for _, ev := range resp.Events {
			host, kind, ok := h.st.ParseHostKey(string(ev.Kv.Key))
			if !ok {
				continue
			}
			switch {
			case store.IsDesired(kind) && ev.Type == clientv3.EventTypeDelete:
				h.setDesired(host, nil, 0)
			case store.IsDesired(kind):
				h.setDesired(host, ev.Kv.Value, ev.Kv.ModRevision)
				if e := h.entry(host); e.applied < ev.Kv.ModRevision {
					e.pendingRev, e.pendingSince = ev.Kv.ModRevision, time.Now()
				}
			case ev.Type == clientv3.EventTypePut:
				statuses = append(statuses, seen{host, h.setStatus(host, ev.Kv.Value)})
			}
		}
		cb := h.onStatus
		h.mu.Unlock()
		if cb != nil {
			for _, s := range statuses {
				cb(s.host, s.news)
			}
		}
	}
}

// setDesired records a new desired state and wakes the host's waiters;
// mu must be held.
func (h *hub) setDesired(host string, data []byte, rev int64) {
	e := h.entry(host)
	if e.rev == rev && rev != 0 {
		return
	}
	e.desired, e.rev = data, rev
	close(e.changed)
	e.changed = make(chan struct{})
}

func (h *hub) setStatus(host string, raw []byte) (news bool) {
	var r struct {
		Status struct {
			AppliedRevision int64           `json:"appliedRevision"`
			KeyGeneration   int64           `json:"keyGeneration"`
			Tasks           json.RawMessage `json:"tasks"`
			Schema          string          `json:"schema"`
		} `json:"status"`
		Received time.Time `json:"received"`
	}
	if err := jsonUnmarshal(raw, &r); err != nil {
		return false
	}
	e := h.entry(host)
	f := fnv.New64a()
	f.Write(r.Status.Tasks)
	tasks := f.Sum64()
	news = e.applied != r.Status.AppliedRevision || e.keyGen != r.Status.KeyGeneration || e.tasks != tasks
	e.lastSeen, e.applied, e.keyGen, e.tasks = r.Received, r.Status.AppliedRevision, r.Status.KeyGeneration, tasks
	if e.schema != r.Status.Schema {
		e.schema = r.Status.Schema
		h.schemaNews.Store(true)
	}
	if e.pendingRev != 0 && e.applied >= e.pendingRev {
		if h.fanout != nil {
			h.fanout(time.Since(e.pendingSince).Seconds())
		}
		e.pendingRev = 0
	}
	return news
}

// pending counts the hosts whose desired state, written while this server
// watched, they have not reported applied yet.
func (h *hub) pending() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, e := range h.hosts {
		if e.pendingRev != 0 && e.rev != 0 {
			n++
		}
	}
	return n
}

// wait returns the host's desired state as soon as its revision differs
// from index, or when wait elapses, ctx ends or the hub closes, whichever
// is first.
func (h *hub) wait(ctx context.Context, host string, index int64, wait time.Duration) ([]byte, int64) {
	h.mu.Lock()
	e := h.entry(host)
	if e.rev != index || h.closed || wait <= 0 {
		data, rev := e.desired, e.rev
		h.mu.Unlock()
		return data, rev
	}
	ch := e.changed
	h.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	h.parked.Add(1)
	defer h.parked.Add(-1)
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return e.desired, e.rev
}

// close wakes every waiter for good (server shutdown).
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.closed = true
	for _, e := range h.hosts {
		close(e.changed)
		e.changed = make(chan struct{})
	}
}

// hostView is what the hub knows of one host.
type hostView struct {
	DesiredRevision int64
	AppliedRevision int64
	LastSeen        time.Time
	KeyGeneration   int64
}

func (h *hub) view(host string) hostView {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.hosts[host]
	if e == nil {
		return hostView{}
	}
	return hostView{DesiredRevision: e.rev, AppliedRevision: e.applied, LastSeen: e.lastSeen, KeyGeneration: e.keyGen}
}

// keyGenerations is every host's key generation as its last status
// reported it (hosts that reported none, or generation 0, left out).
func (h *hub) keyGenerations() map[string]int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int64)
	for name, e := range h.hosts {
		if e.keyGen != 0 {
			out[name] = e.keyGen
		}
	}
	return out
}

// schemas is, per host whose agent reported one, the host-state schema
// it reads.
func (h *hub) schemas() map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]string{}
	for name, e := range h.hosts {
		if e.schema != "" {
			out[name] = e.schema
		}
	}
	return out
}

// lastSeen is every host's last status time.
func (h *hub) lastSeen() map[string]time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]time.Time, len(h.hosts))
	for name, e := range h.hosts {
		if !e.lastSeen.IsZero() {
			out[name] = e.lastSeen
		}
	}
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
