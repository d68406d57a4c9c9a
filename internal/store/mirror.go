package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Mirror keeps the controller's inputs in memory, decoded, from one etcd
// watch over the whole prefix: apps, servers, placement and every host's
// desired state. A reconcile then reads nothing from etcd: at 10,000
// servers a full range of the state per pass (and decoding every record
// again) was about a tenth of the server's CPU.
//
// Reads are consistent at one etcd revision (a watch response is applied
// whole), and never older than this Store's own last write (see
// Store.written): the controller sees its own placement and desired
// states at once. Changes to apps and servers, the controller's triggers,
// are signalled on Changes after they are applied, never before.
type Mirror struct {
	st *Store

	mu      sync.Mutex
	rev     int64         // revision the mirror holds
	moved   chan struct{} // closed and replaced when rev moves
	loaded  bool
	apps    map[string]AppRecord
	servers map[string]ServerRecord
	place   map[string]AppPlacement
	desired map[string]*HostKeys // Desired and DesiredRevision only
	// The last snapshot, shared while nothing under it changed.
	sn *Snapshot

	changes chan struct{}
}

// NewMirror makes a mirror of st; Run fills it.
func NewMirror(st *Store) *Mirror {
	return &Mirror{st: st, moved: make(chan struct{}), changes: make(chan struct{}, 1)}
}

// Changes receives a value after a change of an app or a server has been
// applied to the mirror (many changes may make one value), and once after
// every (re)load.
func (m *Mirror) Changes() <-chan struct{} { return m.changes }

func (m *Mirror) signal() {
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

// Run keeps the mirror in step until ctx ends; after a broken watch (etcd
// compaction, leader loss) it reloads everything and watches again.
func (m *Mirror) Run(ctx context.Context) {
	for ctx.Err() == nil {
		rev, err := m.load(ctx)
		if err != nil {
			m.st.log.Warn("mirror: load state", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		m.watch(ctx, rev)
	}
}

func (m *Mirror) load(ctx context.Context) (int64, error) {
	resp, err := m.st.client.Get(ctx, m.st.prefix+"/", clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("store: read state: %w", err)
	}
	m.mu.Lock()
	m.apps, m.servers, m.place = map[string]AppRecord{}, map[string]ServerRecord{}, map[string]AppPlacement{}
	m.desired = map[string]*HostKeys{}
	for _, kv := range resp.Kvs {
		m.put(kv.Key, kv.Value, kv.ModRevision)
	}
	m.loaded = true
	m.advance(resp.Header.Revision)
	m.mu.Unlock()
	m.signal()
	return resp.Header.Revision, nil
}

func (m *Mirror) watch(ctx context.Context, rev int64) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := m.st.client.Watch(wctx, m.st.prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			m.st.log.Warn("mirror: watch broken; reloading", "err", err)
			return
		}
		changed := false
		m.mu.Lock()
		for _, ev := range resp.Events {
			var c bool
			if ev.Type == clientv3.EventTypeDelete {
				c = m.del(ev.Kv.Key)
			} else {
				c = m.put(ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision)
			}
			changed = changed || c
		}
		m.advance(resp.Header.Revision)
		m.mu.Unlock()
		if changed {
			m.signal()
		}
	}
}

// advance moves the revision and wakes readers waiting for it; mu held.
func (m *Mirror) advance(rev int64) {
	if rev <= m.rev {
		return
	}
	m.rev = rev
	close(m.moved)
	m.moved = make(chan struct{})
}

// kind splits a key into its directory and name (for hosts: the host and
// its kind in sub).
func (m *Mirror) kind(key []byte) (dir, name, sub string) {
	rest, ok := strings.CutPrefix(string(key), m.st.prefix+"/")
	if !ok {
		return "", "", ""
	}
	dir, name, _ = strings.Cut(rest, "/")
	if dir == dirHosts {
		name, sub, _ = strings.Cut(name, "/")
	}
	return dir, name, sub
}

// put applies one key's new value and reports whether it is an app or a
// server (a controller trigger); mu held. A record that does not decode
// is left out, as Snapshot would refuse it; it is logged.
func (m *Mirror) put(key, value []byte, rev int64) bool {
	dir, name, sub := m.kind(key)
	bad := func(err error) bool {
		m.st.log.Warn("mirror: corrupt record left out", "key", string(key), "err", err)
		return false
	}
	switch dir {
	case dirApps:
		var r AppRecord
		if err := json.Unmarshal(value, &r); err != nil {
			return bad(err)
		}
		r.Revision = rev
		m.apps[name] = r
		m.dirty()
		return true
	case dirServers:
		var r ServerRecord
		if err := json.Unmarshal(value, &r); err != nil {
			return bad(err)
		}
		r.Revision = rev
		m.servers[name] = r
		m.dirty()
		return true
	case dirPlacement:
		var r AppPlacement
		if err := json.Unmarshal(value, &r); err != nil {
			return bad(err)
		}
		r.Revision = rev
		m.place[name] = r
		m.dirty()
	case dirHosts:
		if sub == suffixDesired && name != "" {
			m.desired[name] = &HostKeys{Desired: value, DesiredRevision: rev}
		}
	}
	return false
}

// del applies a deletion, like put; mu held.
func (m *Mirror) del(key []byte) bool {
	dir, name, sub := m.kind(key)
	switch dir {
	case dirApps:
		delete(m.apps, name)
		m.dirty()
		return true
	case dirServers:
		delete(m.servers, name)
		m.dirty()
		return true
	case dirPlacement:
		delete(m.place, name)
		m.dirty()
	case dirHosts:
		if sub == suffixDesired {
			delete(m.desired, name)
		}
	}
	return false
}

func (m *Mirror) dirty() { m.sn = nil }

// Read returns the state as a Snapshot and every host's desired state
// (Status left nil), both at the mirror's revision, once the mirror holds
// everything this Store wrote so far. It waits at most wait for that and
// then returns an error (the watch may be broken): the caller can read
// etcd instead. The snapshot is shared and read-only; the map is the
// caller's.
func (m *Mirror) Read(ctx context.Context, wait time.Duration) (*Snapshot, map[string]*HostKeys, error) {
	want := m.st.written.Load()
	t := time.NewTimer(wait)
	defer t.Stop()
	m.mu.Lock()
	for !m.loaded || m.rev < want {
		ch := m.moved
		m.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			return nil, nil, fmt.Errorf("store: the mirror is at revision %d, behind this server's write at %d after %s", m.rev, want, wait)
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		m.mu.Lock()
	}
	defer m.mu.Unlock()
	if m.sn == nil {
		m.sn = &Snapshot{Apps: sortedValues(m.apps), Servers: sortedValues(m.servers), Placement: sortedValues(m.place)}
	}
	m.sn.Revision = m.rev
	sn := *m.sn
	hosts := make(map[string]*HostKeys, len(m.desired))
	for name, h := range m.desired {
		hosts[name] = h
	}
	return &sn, hosts, nil
}

// Server is one server's record as the mirror holds it (ok false when it
// holds none, or has not loaded yet). It may lag etcd by a watch event.
func (m *Mirror) Server(name string) (ServerRecord, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.servers[name]
	return r, ok && m.loaded
}

// FreshServer is Server, but ok only when the mirror holds every server
// record written through this Store so far (Store.serversWritten): a
// server record this server just wrote (a join, a revocation) is never
// missed. Other writes (desired states, placement) do not count: while a
// change's thousands of desired states stream into etcd the mirror is
// always a little behind them, and agent requests checked against it
// would all go to etcd. Records written through other servers of a
// cluster reach it one watch event later.
func (m *Mirror) FreshServer(name string) (ServerRecord, bool) {
	want := m.st.serversWritten.Load()
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.servers[name]
	return r, ok && m.loaded && m.rev >= want
}

// Revision is the revision the mirror holds (0 before its first load).
func (m *Mirror) Revision() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev
}

// sortedValues lists a map's values by key, as etcd lists keys (nil for
// none, as Snapshot).
func sortedValues[V any](m map[string]V) []V {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]V, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
