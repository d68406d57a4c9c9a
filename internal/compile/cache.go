package compile

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// Cache makes a recompile after a small change cheap. It remembers, per
// app, the paths and per-host parts of the last compile, keyed by a
// fingerprint of everything they are derived from, and per host the
// assembled HostState, keyed by the apps (fingerprints) it is made of. A
// compile through a Cache gives exactly the Plan that Compile gives for the
// same Input, byte for byte: placement, networks, addresses and tasks are
// computed in full every time (they depend on the whole fleet), and only
// what is provably the same is reused (an app's task list when every task
// compares equal to the last plan's).
//
// Plans returned by one Cache share backing arrays with each other, so
// they must be treated as read-only, as every Plan must. The zero Cache is
// ready to use. A Cache may be used from several goroutines, but compiles
// through one Cache run one at a time; keep one Cache per sequence of
// related compiles (a controller's loop), not one per request.
type Cache struct {
	mu sync.Mutex
	cacheState
}

// cacheState is what a Cache remembers (a struct of its own so that a
// benchmark's copy of a cache copies every field, new ones too).
type cacheState struct {
	// servers are the server names, in name order, of the last compile:
	// entries refer to servers by index, so a change of the list drops
	// everything.
	servers []string
	apps    map[string]*appEntry
	hosts   []*hostEntry // by server index, as servers
	gen     uint64       // last appEntry.gen given out
	// ids are the task IDs of the last compile, by "app/class"
	// (compiler.taskIDs).
	ids map[string][]string
	// meta is every server's meta at the last compile, by index as
	// servers: fingerprints leave the servers' metas out, and an app
	// whose tasks run on a server whose meta changed since is not
	// reused (prepare).
	meta []serverMeta
	// tasks are the last plan's task lists, by app (TaskList): an app
	// whose tasks come out the same keeps its list (planTasks).
	tasks map[string][]Task
}

// appEntry is what one app contributed to the last plan it was part of.
type appEntry struct {
	// gen identifies the fingerprint: a new entry gets a new gen, so a
	// host's key can name its apps by gen instead of repeating their
	// fingerprints.
	gen   uint64
	fp    []byte // nil when not memoised
	done  bool   // paths and parts hold this fingerprint's results
	paths *pathGen
	parts map[int32]*hostPart // by server index
	// dests are the destination lists of the app's classes (class.dests)
	// by class name: a later entry of the app takes those that are
	// unchanged, so that a class's list stays one slice, shared by every
	// host's route groups, across recompiles that do not change it.
	dests map[string][]RouteDest
	// addrs are the classes' sorted task addresses (class.addrs) by
	// class name, taken whole by a later compile that hits the entry.
	addrs map[string][]netip.Addr
}

// hostEntry is one host's state at the last compile and what it was built
// from.
type hostEntry struct {
	addr   netip.Addr
	wgPort int
	rot    rotation
	gens   []uint64 // the apps it runs a task of, in network order
	state  HostState
	// parts are the parts state was built from, in network order (nil
	// for a host without tasks); linked says that links added to it
	// (addLinks), so that its lists are not only its parts'.
	parts  []*hostPart
	linked bool
	// meta is every server's meta at the compile that made state (one
	// slice shared by that compile's entries), by index as servers.
	meta []serverMeta
}

// Compile is Compile(in), reusing what the previous compiles through c
// derived from the same parts of the input. On error c keeps what it had.
func (c *Cache) Compile(in Input) (*Plan, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.compile(in, true)
}

// prepare gives every app its entry: the cached one when the app's
// fingerprint is unchanged, else a new, empty one. Without memo every
// entry is new and no fingerprint is computed.
func (k *Cache) prepare(c *compiler, memo bool) {
	// commit sets the names and the metas together: the same names mean
	// metas to compare, one per server.
	if memo && !slices.EqualFunc(k.servers, c.servers, func(n string, s *server) bool { return n == s.spec.Name }) {
		k.apps, k.hosts = nil, nil
	}
	// The fingerprints (most of this function's 0.27 to 0.29 ms, of the
	// 1.8 ms that a one-class change of benchFleet spends before the host
	// states, fourteenth session) are made in two halves side by side;
	// they only read the compiler and the cache.
	type result struct {
		fp  []byte // the new entry's fingerprint; nil: none
		hit bool   // the cached entry is the app's
	}
	var res []result
	if memo {
		// The servers whose meta changed since the last compile (the
		// server list is the same, or the cache is empty).
		c.meta = make([]serverMeta, len(c.servers))
		var changed []bool
		for i, s := range c.servers {
			c.meta[i] = serverMeta{addr: s.addr, wgPort: s.wgPort, key: s.spec.PublicKey, next: s.rot.next}
			if k.apps != nil && k.meta[i] != c.meta[i] {
				if changed == nil {
					changed = make([]bool, len(c.servers))
				}
				changed[i] = true
			}
		}
		res = make([]result, len(c.apps))
		each := func(lo, hi int) {
			var buf []byte
			for i := lo; i < hi; i++ {
				a := c.apps[i]
				var ok bool
				buf, ok = c.fingerprint(buf[:0], a)
				if e := k.apps[a.name]; ok && e != nil && e.done && bytes.Equal(e.fp, buf) && !c.onChanged(a, changed) {
					res[i].hit = true
				} else if ok {
					res[i].fp = bytes.Clone(buf)
				}
			}
		}
		n := len(c.apps)
		sideBySide(n < 2, func() { each(0, n/2) }, func() { each(n/2, n) })
	}
	for i, a := range c.apps {
		var fp []byte
		if memo {
			if res[i].hit {
				a.entry = k.apps[a.name]
				continue
			}
			fp = res[i].fp
		}
		k.gen++
		a.entry = &appEntry{gen: k.gen, fp: fp}
		if memo {
			a.entry.parts = make(map[int32]*hostPart)
		}
	}
}

// commit makes the entries of this compile the cache's, dropping those of
// apps and servers that are gone.
func (k *Cache) commit(c *compiler, hosts []*hostEntry, tasks TaskList) {
	k.servers = k.servers[:0]
	for _, s := range c.servers {
		k.servers = append(k.servers, s.spec.Name)
	}
	k.apps = make(map[string]*appEntry, len(c.apps))
	for _, a := range c.apps {
		if a.entry.fp != nil {
			k.apps[a.name] = a.entry
		}
	}
	k.hosts = hosts
	k.ids = c.ids
	k.meta = c.meta
	k.tasks = make(map[string][]Task, len(tasks.apps))
	for _, ts := range tasks.apps {
		k.tasks[ts[0].App] = ts
	}
}

// onChanged says whether a task of app a runs on a server whose meta
// changed since the last compile. The fingerprint does not show the
// servers' metas, and a host running a task of a reaches those servers:
// its peer and VXLAN entries must be made again, which a new entry for a
// makes happen (the host's key names its apps' entries). A host linked to
// an app that a imports has that app's entry in its key too (linkGens).
func (c *compiler) onChanged(a *app, changed []bool) bool {
	return changed != nil && slices.ContainsFunc(a.tasks, func(ti int32) bool { return changed[c.tasks[ti].server] })
}

// fingerprint appends to b everything app a's paths and host parts are
// derived from: its spec, its network, every task's server (by index:
// the cache is dropped when the server list changes) and address, but
// the fields of those servers that a host's state shows (address,
// WireGuard port, public key, next key of a rotation): those are
// compared once per compile for all apps (serverMeta, onChanged).
// Anything added to what paths() or hostBuilder.part read must be added
// here. ok is false when the spec cannot be encoded; such an app is never
// reused.
func (c *compiler) fingerprint(b []byte, a *app) ([]byte, bool) {
	b, ok := c.ownFingerprint(b, a)
	if !ok {
		return b, false
	}
	// An importer's paths and guests' environment depend on the apps it
	// imports from: their specs (exports), networks and tasks.
	for _, im := range a.spec.Imports {
		name, _, _ := strings.Cut(im.Service, "/")
		other := c.appByName(name)
		if other == nil {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		if b, ok = c.ownFingerprint(b, other); !ok {
			return b, false
		}
	}
	return b, true
}

// ownFingerprint is the part of app a's fingerprint that a alone gives.
func (c *compiler) ownFingerprint(b []byte, a *app) ([]byte, bool) {
	js, err := json.Marshal(a.spec)
	if err != nil {
		return b, false
	}
	b = appendBytes(b, js)
	b, _ = a.network.AppendBinary(b)
	for _, ti := range a.tasks {
		t := &c.tasks[ti]
		b = binary.AppendUvarint(b, uint64(t.server))
		b, _ = t.addr.AppendBinary(b)
	}
	// Pending tasks: their addresses are in the firewall rules and the
	// peers' environment (pending.go).
	b = binary.AppendUvarint(b, uint64(len(a.pending)))
	for _, ti := range a.pending {
		b, _ = c.tasks[ti].addr.AppendBinary(b)
	}
	return b, true
}

func appendBytes[S []byte | string](b []byte, s S) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}
