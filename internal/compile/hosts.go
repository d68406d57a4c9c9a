package compile

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// VTEPMAC is the MAC address of the corv0 device of the host with the given
// underlay address: locally administered, unicast, and derived from the
// address alone so that every host computes the same MAC for a peer
// without asking it. IPv4 underlays map one to one (02:c0 + the four
// bytes); IPv6 ones use four bytes of a SHA-256 under 02:c6.
func VTEPMAC(underlay netip.Addr) string {
	underlay = underlay.Unmap()
	if underlay.Is4() {
		b := underlay.As4()
		return fmt.Sprintf("02:c0:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
	}
	b := underlay.As16()
	h := sha256.Sum256(b[:])
	return fmt.Sprintf("02:c6:%02x:%02x:%02x:%02x", h[0], h[1], h[2], h[3])
}

// HostIf is the name of the host-side interface (veth or tap) of a task's
// guest: "corg" and 10 hex digits of SHA-256 of the task ID, 14 bytes,
// within Linux's 15-byte limit on interface names.
func HostIf(taskID string) string {
	h := sha256.Sum256([]byte(taskID))
	return "corg" + hex.EncodeToString(h[:5])
}

// hosts derives every host's desired state. Each host is built from the
// apps it runs a task of, and touches only those apps' tasks: the cost of a
// host is the size of its apps, never the size of the fleet.
//
// A host's state is assembled from one part per app it runs (guests,
// firewall rules, routes, remote guests by server). With memo, a host whose
// address, port and apps (by fingerprint) are those of the cache's entry is
// taken as it was; a host that changed reuses the parts of its unchanged
// apps and computes only the others. hosts returns the host entries for the
// cache (nil without memo).
func (c *compiler) hosts(k *Cache, memo bool) ([]HostState, []*hostEntry) {
	// Apps in the order of their networks, which do not overlap: scanning
	// each app's tasks by address then yields routes sorted by address.
	c.byNet = slices.Clone(c.apps)
	slices.SortFunc(c.byNet, func(x, y *app) int { return x.network.Addr().Compare(y.network.Addr()) })
	for i, a := range c.byNet {
		a.netRank = i
	}
	// Each task's app by network rank, in a small array: the builders
	// read it for every task of every server, and the tasks themselves
	// are 2 MB to walk at random.
	c.rank = make([]int32, len(c.tasks))
	for i := range c.tasks {
		c.rank[i] = int32(c.tasks[i].app.netRank)
	}
	n := len(c.servers)
	out := make([]HostState, n)
	// The hosts are built by up to hostWorkers builders side by side, each
	// on its own range of servers with its own scratch space. What they
	// share is only read while they run: the apps' task lists by address
	// and the classes' peer variables are made here first, and the parts
	// they compute go into the cache's entries after they are done.
	workers := min(runtime.GOMAXPROCS(0), hostWorkers, max(1, n/minHostsPerWorker))
	for _, a := range c.apps {
		// The tasks by address make the classes' destination lists: an
		// app whose entry the cache has, unchanged, needs none (its lists
		// are the entry's, classDests).
		if !memo || a.entry.dests == nil {
			a.byAddr = slices.Clone(a.tasks)
			slices.SortFunc(a.byAddr, func(x, y int32) int { return c.tasks[x].addr.Compare(c.tasks[y].addr) })
		}
		if len(a.entry.parts) == 0 { // parts will be computed for it
			for _, cl := range a.classes {
				c.peersEnv(a, cl)
			}
		}
		c.classDests(k, a, memo)
	}
	hbs := make([]*hostBuilder, workers)
	// The hosts' cache entries, by server index: each builder writes its
	// own servers'.
	var entries []*hostEntry
	if memo {
		entries = make([]*hostEntry, n)
	}
	// The builders take the servers in chunks, the next free one each:
	// after a small change through the cache the rebuilt hosts are those
	// of one app, which may sit mostly in one part of the server list
	// (in benchFleet, fixed halves gave one builder 0.7 ms and the other
	// 4.4).
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		hb := &hostBuilder{c: c, slot: make([]int32, n), nEnc: make([]int32, n), nPlain: make([]int32, n), mac: make([]string, n), mark: make([]int32, len(c.apps))}
		hbs[w] = hb
		if workers == 1 {
			hb.run(k, memo, 0, n, out, entries)
			break
		}
		wg.Go(func() {
			for {
				hi := int(next.Add(hostChunk))
				lo := hi - hostChunk
				if lo >= n {
					return
				}
				hb.run(k, memo, lo, min(hi, n), out, entries)
			}
		})
	}
	wg.Wait()
	if memo {
		for _, hb := range hbs {
			for _, np := range hb.newParts {
				np.e.parts[np.server] = np.part
			}
		}
	}
	return out, entries
}

// classDests gives each class of a its destination list (class.dests):
// its tasks by address, with their servers. With memo the lists of the
// app's last entry that are unchanged are taken as they were (one slice
// per class, shared by every host's groups and by recompiles that do not
// change the class), and the entry keeps this compile's.
func (c *compiler) classDests(k *Cache, a *app, memo bool) {
	var prev map[string][]RouteDest
	if memo {
		if a.entry.dests != nil {
			// The entry is the last compile's, unchanged: so are its
			// tasks, their addresses and servers (the fingerprint).
			for _, cl := range a.classes {
				cl.dests = a.entry.dests[cl.name]
			}
			return
		}
		if e := k.apps[a.name]; e != nil {
			prev = e.dests
		}
	}
	n := make([]int, len(a.classes))
	for _, ti := range a.byAddr {
		n[c.tasks[ti].class.pos]++
	}
	for _, cl := range a.classes {
		cl.dests = make([]RouteDest, 0, n[cl.pos])
	}
	for _, ti := range a.byAddr {
		t := &c.tasks[ti]
		t.class.dests = append(t.class.dests, RouteDest{Addr: t.addr, Server: c.servers[t.server].spec.Name})
	}
	var keep map[string][]RouteDest
	if memo {
		keep = make(map[string][]RouteDest, len(a.classes))
	}
	for _, cl := range a.classes {
		if old, ok := prev[cl.name]; ok && slices.Equal(old, cl.dests) {
			cl.dests = old
		}
		if memo {
			keep[cl.name] = cl.dests
		}
	}
	if memo {
		a.entry.dests = keep
	}
}

// hostWorkers bounds the builders that make host states side by side;
// minHostsPerWorker keeps small fleets on one.
// hostChunk is how many servers a builder takes at a time.
const (
	hostWorkers       = 4
	minHostsPerWorker = 64
	hostChunk         = 16
)

// run builds the states of servers [lo, hi) into out.
func (hb *hostBuilder) run(k *Cache, memo bool, lo, hi int, out []HostState, entries []*hostEntry) {
	c := hb.c
	var gens []uint64
	for i := lo; i < hi; i++ {
		s := c.servers[i]
		// The apps of s, in network order.
		hb.apps = hb.apps[:0]
		for _, ti := range s.guestIdx {
			if r := c.rank[ti]; hb.mark[r] != s.idx+1 {
				hb.mark[r] = s.idx + 1
				hb.apps = append(hb.apps, hostApp{a: c.byNet[r]})
			}
		}
		slices.SortFunc(hb.apps, func(x, y hostApp) int { return x.a.netRank - y.a.netRank })
		gens = gens[:0]
		for _, ha := range hb.apps {
			gens = append(gens, ha.a.entry.gen)
		}
		gens = c.linkGens(gens, hb.apps)
		var e *hostEntry
		if i < len(k.hosts) {
			e = k.hosts[i]
		}
		if memo && e != nil && e.addr == s.addr && e.wgPort == s.wgPort && e.rot == s.rot && slices.Equal(e.gens, gens) {
			out[i] = e.state
			entries[i] = e
			continue
		}
		if hb.mac[i] == "" {
			hb.mac[i] = VTEPMAC(s.addr)
		}
		// e (nil without memo: the cache is new) is the host's last
		// state, whose unchanged lists are kept.
		out[i] = hb.build(s, memo, e)
		linked := c.addLinks(&out[i], s)
		if memo {
			parts := make([]*hostPart, len(hb.apps))
			for j, ha := range hb.apps {
				parts[j] = ha.part
			}
			entries[i] = &hostEntry{addr: s.addr, wgPort: s.wgPort, rot: s.rot, gens: slices.Clone(gens),
				state: out[i], parts: parts, linked: linked, meta: c.meta}
		}
	}
}

// newPart is a part a builder computed, for the cache's app entry.
type newPart struct {
	e      *appEntry
	server int32
	part   *hostPart
}

// hostBuilder holds the scratch space reused from host to host.
type hostBuilder struct {
	c    *compiler
	mark []int32 // per app (by netRank): 1 + index of the last server found to run a task of it
	// What this builder made for the cache, stored once every builder is
	// done.
	newParts []newPart
	mac      []string // VTEPMAC per server, made when first needed
	slot     []int32  // per server: its slot flags in derivedEntries, 1 if dirty (hostBuilder.dirty), else 0
	nEnc     []int32  // per server: remote tasks reached encrypted
	nPlain   []int32  // per server: remote tasks reached in plain
	touched  []int32  // servers with a count, for resetting
	remotes  []remoteMerge
	apps     []hostApp // the apps of the host being built, in network order
	byName   []*hostPart
	// Parts computed for the host being built keep their guests, firewall
	// rules and routes here until they are copied into the host's state.
	guests   []Guest
	firewall []FirewallRule
	// derivedEntries' peers and VXLAN entries, before they are compared
	// with the last state's.
	peers []Peer
	vxlan []VXLANEntry
	key   []byte // a reach's key (reach.go)
}

// remoteCount is how many guests of one server a reach reaches encrypted
// and in plain.
type remoteCount struct{ server, nEnc, nPlain int32 }

// remoteMerge is how the host being built reaches one remote server, over
// all its apps (patchDerived).
type remoteMerge struct {
	server               int32
	encParts, plainParts int // parts that reach it encrypted, in plain
}

// hostApp is one app of the host being built and its part. A part
// computed for this host (fresh) has its route groups made only once the
// host's slice of them is (appendGroups), so that they are written once,
// in place, and not copied from scratch space.
type hostApp struct {
	a     *app
	part  *hostPart
	fresh bool
	srcs  [][2][]netip.Addr // fresh: the local sources by class and encryption
	n     int               // fresh: its route groups
}

// hostPart is what one app contributes to one host's state. Its slices are
// read-only: once the host is assembled they point into the host's own
// slices (guests, firewall, routes).
type hostPart struct {
	app      string         // the app's name
	guests   []Guest        // in plan order
	firewall []FirewallRule // in the host's firewall order
	groups   []RouteGroup   // by class (spec order), plain first
	// The servers whose guests the app's route groups reach, the host's
	// own among them. nil: none.
	reach *reach
}

// build makes host s's state. With pe (the host's entry in the cache,
// whose state this one replaces), its peers and VXLAN entries are pe's,
// patched where the parts changed (patchDerived); when pe's state is not
// only its parts' (links, or not derived), they are made again and taken
// from pe where equal (derivedEntries).
func (hb *hostBuilder) build(s *server, memo bool, pe *hostEntry) HostState {
	var prev *HostState
	if pe != nil {
		prev = &pe.state
	}
	c := hb.c
	hs := HostState{
		Schema: hoststate.Schema, Host: s.spec.Name, Address: s.addr, VTEPMAC: hb.mac[s.idx], WireGuardPort: s.wgPort,
		KeyGeneration: s.rot.gen, RotationPhase: s.rot.phase,
		Guests: []Guest{}, Peers: []Peer{}, VXLAN: []VXLANEntry{}, Routes: []Route{}, Firewall: []FirewallRule{},
	}
	if s.rot.phase != "" {
		hs.PublicKey = s.spec.PublicKey
	}
	if len(s.guestIdx) == 0 {
		return hs
	}
	hb.guests, hb.firewall = hb.guests[:0], hb.firewall[:0]
	hb.byName = hb.byName[:0]
	nGuests, nFirewall, nGroups := 0, 0, 0
	for i := range hb.apps {
		ha := &hb.apps[i]
		e := ha.a.entry
		ha.part, ha.fresh = e.parts[s.idx], false
		if ha.part == nil {
			ha.part, ha.srcs, ha.n = hb.part(s, ha.a)
			ha.fresh = true
			if memo {
				hb.newParts = append(hb.newParts, newPart{e, s.idx, ha.part})
			}
		}
		p := ha.part
		nGuests += len(p.guests)
		nFirewall += len(p.firewall)
		if ha.fresh {
			nGroups += ha.n
		} else {
			nGroups += len(p.groups)
		}
		hb.byName = append(hb.byName, p)
	}
	// Guests and firewall rules sort by app name first, routes by address:
	// the parts go in name order for the former, network order for the
	// latter. Each part then points at its copy, so that the scratch space
	// can be reused and the cache keeps only the latest host states alive.
	slices.SortFunc(hb.byName, func(x, y *hostPart) int { return strings.Compare(x.guests[0].App, y.guests[0].App) })
	hs.Guests = make([]Guest, 0, nGuests)
	hs.Firewall = make([]FirewallRule, 0, nFirewall)
	for _, p := range hb.byName {
		p.guests = appendPart(&hs.Guests, p.guests)
		p.firewall = appendPart(&hs.Firewall, p.firewall)
	}
	// Routes: as groups (hoststate.RouteGroup), per app in network order,
	// each to one class's shared destination list. hs.Routes stays empty
	// (and not nil: a state's expansion writes "routes":[...]).
	if nGroups > 0 {
		hs.RouteGroups = make([]RouteGroup, 0, nGroups)
	}
	for i := range hb.apps {
		ha := &hb.apps[i]
		if !ha.fresh {
			ha.part.groups = appendPart(&hs.RouteGroups, ha.part.groups)
			continue
		}
		g0 := len(hs.RouteGroups)
		hs.RouteGroups = appendGroups(hs.RouteGroups, ha.a, ha.srcs)
		ha.part.groups = hs.RouteGroups[g0:len(hs.RouteGroups):len(hs.RouteGroups)]
		ha.srcs = nil
	}
	// Schema 1.6: the peers and VXLAN entries without their lists, which
	// are the route groups' (hoststate.State.Derived). They change only
	// when the servers reached or their meta change. addLinks and
	// addIngress fill them in for a host whose lists are more than that.
	if pe != nil && pe.parts != nil && !pe.linked && (pe.state.Derived || len(pe.state.Peers)+len(pe.state.VXLAN) == 0) {
		// Only the servers that a changed part reaches otherwise
		// (another way, or no longer), or whose meta changed, can have
		// other entries than the last state's.
		hs.Peers, hs.VXLAN = hb.patchDerived(s, pe)
	} else {
		hs.Peers, hs.VXLAN = hb.derivedEntries(s, prev)
	}
	hs.Derived = len(hs.Peers)+len(hs.VXLAN) > 0
	hs.Outbound = c.outbound(hs.Guests)
	return hs
}

// Flags of a server in hostBuilder.slot while derivedEntries runs.
const (
	slotSeen  = 1 << iota // in hb.touched
	slotEnc               // reached encrypted: a peer
	slotPlain             // reached in plain: a VXLAN entry
)

// derivedEntries are host s's peers and VXLAN entries without their
// lists: one per remote server its parts' reaches list guests on,
// encrypted or in plain (the servers of its route groups' destinations),
// by name. prev's lists when they are the same entries (prev derived
// too), so that an unchanged list stays the one slice.
func (hb *hostBuilder) derivedEntries(s *server, prev *HostState) ([]Peer, []VXLANEntry) {
	c := hb.c
	touched := hb.touched[:0]
	for _, ha := range hb.apps {
		r := ha.part.reach
		if r == nil {
			continue
		}
		for _, rc := range r.remotes {
			if rc.server == s.idx {
				continue
			}
			f := hb.slot[rc.server]
			if f == 0 {
				touched = append(touched, rc.server)
				f = slotSeen
			}
			if rc.nEnc > 0 {
				f |= slotEnc
			}
			if rc.nPlain > 0 {
				f |= slotPlain
			}
			hb.slot[rc.server] = f
		}
	}
	slices.Sort(touched) // servers are by name: the entries' order
	peers, vxlan := hb.peers[:0], hb.vxlan[:0]
	for _, si := range touched {
		f := hb.slot[si]
		hb.slot[si] = 0
		rs := c.servers[si]
		if f&slotEnc != 0 {
			peers = append(peers, Peer{Server: rs.spec.Name, PublicKey: rs.spec.PublicKey, NextPublicKey: rs.rot.next,
				Endpoint: netip.AddrPortFrom(rs.addr, uint16(rs.wgPort))})
		}
		if f&slotPlain != 0 {
			if hb.mac[si] == "" {
				hb.mac[si] = VTEPMAC(rs.addr)
			}
			vxlan = append(vxlan, VXLANEntry{Server: rs.spec.Name, Underlay: rs.addr, MAC: hb.mac[si]})
		}
	}
	hb.touched, hb.peers, hb.vxlan = touched[:0], peers, vxlan
	var outP []Peer
	var outV []VXLANEntry
	if prev != nil && prev.Derived && slices.EqualFunc(prev.Peers, peers, func(x, y Peer) bool {
		return x.Server == y.Server && x.PublicKey == y.PublicKey && x.NextPublicKey == y.NextPublicKey && x.Endpoint == y.Endpoint && len(x.AllowedIPs) == 0
	}) {
		outP = prev.Peers
	} else {
		outP = slices.Clone(peers)
		if outP == nil {
			outP = []Peer{}
		}
	}
	if prev != nil && prev.Derived && slices.EqualFunc(prev.VXLAN, vxlan, func(x, y VXLANEntry) bool {
		return x.Server == y.Server && x.Underlay == y.Underlay && x.MAC == y.MAC && len(x.Guests) == 0
	}) {
		outV = prev.VXLAN
	} else {
		outV = slices.Clone(vxlan)
		if outV == nil {
			outV = []VXLANEntry{}
		}
	}
	return outP, outV
}

// appendPart appends part to *dst, which has room for it, and returns the
// copy, full.
func appendPart[T any](dst *[]T, part []T) []T {
	start := len(*dst)
	*dst = append(*dst, part...)
	return (*dst)[start:len(*dst):len(*dst)]
}

// part computes app a's contribution to host s, which runs at least one
// task of a, but for its route groups: it returns the local sources by
// class and encryption and the number of groups, for appendGroups. Guests
// and firewall rules are left in the builder's scratch space until build
// copies them; the remote lists are the reach of the classes the local
// tasks have routes to.
func (hb *hostBuilder) part(s *server, a *app) (*hostPart, [][2][]netip.Addr, int) {
	c := hb.c
	p := &hostPart{app: a.name}
	g0 := len(hb.guests)
	hb.guests = c.guests(hb.guests, s, a)
	p.guests = hb.guests[g0:]

	f0 := len(hb.firewall)
	var srcs [][2][]netip.Addr
	hb.firewall, srcs = hb.appRules(hb.firewall, s, a)
	p.firewall = hb.firewall[f0:]
	slices.SortStableFunc(p.firewall, func(x, y FirewallRule) int {
		return cmp.Or(strings.Compare(x.FromClass, y.FromClass), strings.Compare(x.ToClass, y.ToClass),
			strings.Compare(x.Protocol, y.Protocol), strings.Compare(x.Direction, y.Direction))
	})

	p.reach = hb.reach(a, srcs)
	nGroups := 0
	for _, cs := range srcs {
		for _, src := range cs {
			if len(src) > 0 {
				nGroups++
			}
		}
	}
	return p, srcs, nGroups
}

// appendGroups appends app a's route groups from the local sources srcs
// (by class and encryption): one per class and encryption with sources,
// to the class's destination list.
func appendGroups(gs []RouteGroup, a *app, srcs [][2][]netip.Addr) []RouteGroup {
	for _, cl := range a.classes {
		for e, src := range srcs[cl.pos] {
			if len(src) > 0 {
				gs = append(gs, RouteGroup{App: a.name, Class: cl.name, Sources: src, Dests: cl.dests, Encrypt: e == 1})
			}
		}
	}
	return gs
}

// appRules appends host s's firewall rules for app a to fw and returns,
// per class and encryption, the local sources of routes to that class.
func (hb *hostBuilder) appRules(fw []FirewallRule, s *server, a *app) ([]FirewallRule, [][2][]netip.Addr) {
	c := hb.c
	n := len(a.classes)
	local := make([][]netip.Addr, n)
	for _, ti := range s.guestIdx {
		if t := &c.tasks[ti]; t.app == a {
			local[t.class.pos] = append(local[t.class.pos], t.addr)
		}
	}
	for _, l := range local {
		slices.SortFunc(l, netip.Addr.Compare)
	}
	srcs := make([][2][]netip.Addr, n) // [class][encrypt]
	for ri := range a.rules {
		r := &a.rules[ri]
		A, B := r.from, r.to
		if len(A.tasks) == 0 || len(B.tasks) == 0 || (A == B && len(A.tasks) < 2) {
			continue // no path: nothing to allow
		}
		e := b2i(r.encrypt)
		la, lb := local[A.pos], local[B.pos]
		if len(la) > 0 {
			srcs[B.pos][e] = append(srcs[B.pos][e], la...)
			fw = append(fw, FirewallRule{
				App: a.name, FromClass: A.name, ToClass: B.name, Direction: Egress,
				Sources: slices.Clip(la), Dests: slices.Clip(B.addrs),
				Protocol: r.protocol, Ports: r.ports, Encrypt: r.encrypt,
			})
		}
		if len(lb) > 0 {
			srcs[A.pos][e] = append(srcs[A.pos][e], lb...)
			fw = append(fw, FirewallRule{
				App: a.name, FromClass: A.name, ToClass: B.name, Direction: Ingress,
				Sources: slices.Clip(A.addrs), Dests: slices.Clip(lb),
				Protocol: r.protocol, Ports: r.ports, Encrypt: r.encrypt,
				RemoteSources: without(A.addrs, la),
			})
		}
	}
	for i := range srcs {
		for e := range srcs[i] {
			srcs[i][e] = sortAddrs(srcs[i][e])
		}
	}
	return fw, srcs
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// without is all minus drop, both sorted, drop a subset of all; nil when
// nothing is left, all itself (clipped, shared: both are read-only) when
// drop is empty, as it is on most hosts.
func without(all, drop []netip.Addr) []netip.Addr {
	if len(all) == len(drop) {
		return nil
	}
	if len(drop) == 0 {
		return slices.Clip(all)
	}
	out := make([]netip.Addr, 0, len(all)-len(drop))
	j := 0
	for _, x := range all {
		for j < len(drop) && drop[j].Less(x) {
			j++
		}
		if j < len(drop) && drop[j] == x {
			continue
		}
		out = append(out, x)
	}
	return out
}

// sortAddrs sorts and removes duplicates in place.
func sortAddrs(a []netip.Addr) []netip.Addr {
	slices.SortFunc(a, netip.Addr.Compare)
	return slices.Clip(slices.Compact(a))
}

// guests appends the tasks of app a that s runs, in plan order, with their
// environment.
func (c *compiler) guests(out []Guest, s *server, a *app) []Guest {
	var idx []int32
	for _, ti := range s.guestIdx {
		if c.tasks[ti].app == a {
			idx = append(idx, ti)
		}
	}
	slices.SortFunc(idx, func(x, y int32) int {
		tx, ty := &c.tasks[x], &c.tasks[y]
		return cmp.Or(strings.Compare(tx.class.name, ty.class.name), cmp.Compare(tx.index, ty.index))
	})
	for _, ti := range idx {
		t := &c.tasks[ti]
		cl := t.class
		sp := cl.spec.Guest
		sp.Command = slices.Clone(sp.Command)
		sp.Env = maps.Clone(sp.Env)
		env := make(map[string]string, len(sp.Env)+6+len(cl.out))
		maps.Copy(env, sp.Env)
		env[spec.EnvApp] = t.app.name
		env[spec.EnvClass] = cl.name
		env[spec.EnvTask] = t.id
		env[spec.EnvIndex] = strconv.Itoa(t.index)
		env[spec.EnvAddr] = t.addr.String()
		for _, v := range c.peersEnv(t.app, cl) {
			env[v.key] = v.value
		}
		for _, v := range t.app.importEnv(cl) {
			env[v.key] = v.value
		}
		out = append(out, Guest{Task: t.id, App: t.app.name, Class: cl.name, Index: t.index, Address: t.addr, Network: t.app.network,
			HostIf: HostIf(t.id), Spec: sp, Resources: cl.spec.Resources, Env: env, Resolvers: resolvers(t.app.spec)})
	}
	return out
}

// peersEnv is, for each class cl has rules to, the variable listing every
// "addr:port" of that class's tasks on the rules' ports (the class's own
// tasks too, for a self-rule: cluster members usually want the full list).
func (c *compiler) peersEnv(a *app, cl *class) []envVar {
	if cl.peersEnv != nil || len(cl.out) == 0 {
		return cl.peersEnv
	}
	for i := 0; i < len(cl.out); {
		to := a.rules[cl.out[i]].to
		var ports []int
		j := i
		for ; j < len(cl.out) && a.rules[cl.out[j]].to == to; j++ {
			ports = append(ports, a.rules[cl.out[j]].ports...)
		}
		slices.Sort(ports)
		ports = slices.Compact(ports)
		var b strings.Builder
		for _, ad := range to.addrs {
			for _, p := range ports {
				if b.Len() > 0 {
					b.WriteByte(',')
				}
				b.WriteString(netip.AddrPortFrom(ad, uint16(p)).String())
			}
		}
		cl.peersEnv = append(cl.peersEnv, envVar{to.envName, b.String()})
		i = j
	}
	return cl.peersEnv
}
