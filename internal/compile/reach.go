package compile

import (
	"net/netip"
	"slices"
	"sort"
	"sync"
)

// reach is what the hosts of one app whose local tasks have routes to the
// same (class, encryption) pairs reach on every server: how many of the
// app's tasks of those classes each server runs, encrypted (a peer) and
// in plain (a VXLAN entry). The lists themselves are the route groups'
// (derived states, schema 1.6). A host takes every server but its own, so
// one reach serves every host with that set of pairs, wherever it is: an
// app of 200 tasks on 200 hosts has a handful of reaches, not 200. It is
// read-only, shared by the parts that take it.
type reach struct {
	remotes []remoteCount // servers with a task reached, by index
}

// reachSet is an app's reaches in one compile, by key (hostBuilder.reach).
// Host builders run side by side: the first that needs a reach makes it.
type reachSet struct {
	mu sync.Mutex
	m  map[string]*reach
}

// reach is app a's reach for the local sources srcs (by class and
// encryption, from appRules): the tasks of every class and encryption with
// a source. nil when there is none (no local task has a route).
func (hb *hostBuilder) reach(a *app, srcs [][2][]netip.Addr) *reach {
	key, any := hb.key[:0], false
	for _, cs := range srcs {
		for _, src := range cs {
			key = append(key, b2byte(len(src) > 0))
			any = any || len(src) > 0
		}
	}
	hb.key = key
	if !any {
		// Without this an app of 10,000 tasks on 10,000 hosts and no
		// rules would walk all of its tasks for nothing.
		return nil
	}
	rs := &a.reaches
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if r, ok := rs.m[string(key)]; ok {
		return r
	}
	r := hb.makeReach(a, key)
	if rs.m == nil {
		rs.m = make(map[string]*reach)
	}
	rs.m[string(key)] = r
	return r
}

// makeReach makes app a's reach of the (class, encryption) pairs set in
// key (two bytes per class in spec order: plain, encrypted): one pass
// over the app's tasks, in any order, counting per server.
func (hb *hostBuilder) makeReach(a *app, key []byte) *reach {
	c := hb.c
	touched := hb.touched[:0]
	for _, ti := range a.tasks {
		t := &c.tasks[ti]
		k := key[2*t.class.pos:]
		if k[0] == 0 && k[1] == 0 {
			continue
		}
		if hb.nEnc[t.server] == 0 && hb.nPlain[t.server] == 0 {
			touched = append(touched, t.server)
		}
		if k[0] != 0 {
			hb.nPlain[t.server]++
		}
		if k[1] != 0 {
			hb.nEnc[t.server]++
		}
	}
	slices.Sort(touched)
	r := &reach{remotes: make([]remoteCount, len(touched))}
	for i, s := range touched {
		r.remotes[i] = remoteCount{server: s, nEnc: hb.nEnc[s], nPlain: hb.nPlain[s]}
		hb.nEnc[s], hb.nPlain[s] = 0, 0
	}
	hb.touched = touched[:0]
	return r
}

func b2byte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// reachDiffs remembers, per pair of reaches (old, new) of one app, the
// servers reached another way by them (setDiff): every rebuilt host with
// the same pair of parts asks for the same difference; likewise per
// earlier compile's meta, the servers whose meta differs from this
// compile's.
type reachDiffs struct {
	mu   sync.Mutex
	sets map[[2]*reach][]int32 // setDiff's
	meta map[*serverMeta][]int32
}

// metaDiff is the servers whose meta in old (an earlier compile's, by
// server index) is not now's: all of them when the lists differ in length.
func (d *reachDiffs) metaDiff(old, now []serverMeta) []int32 {
	if len(old) == 0 || len(old) != len(now) {
		out := make([]int32, len(now))
		for i := range out {
			out[i] = int32(i)
		}
		return out
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if out, ok := d.meta[&old[0]]; ok {
		return out
	}
	out := []int32{}
	for i := range old {
		if old[i] != now[i] {
			out = append(out, int32(i))
		}
	}
	if d.meta == nil {
		d.meta = make(map[*serverMeta][]int32)
	}
	d.meta[&old[0]] = out
	return out
}

// setDiff is the servers reached another way by old and new (either may
// be nil: nothing reached): reached by one only, or encrypted or in plain
// by one only, in increasing order. The guests reached are not compared:
// derived states (schema 1.6) hold no lists.
func (d *reachDiffs) setDiff(old, new *reach) []int32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := [2]*reach{old, new}
	if out, ok := d.sets[k]; ok {
		return out
	}
	var a, b []remoteCount
	if old != nil {
		a = old.remotes
	}
	if new != nil {
		b = new.remotes
	}
	out := []int32{}
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i].server < b[j].server):
			out = append(out, a[i].server)
			i++
		case i == len(a) || b[j].server < a[i].server:
			out = append(out, b[j].server)
			j++
		default:
			x, y := a[i], b[j]
			if (x.nEnc > 0) != (y.nEnc > 0) || (x.nPlain > 0) != (y.nPlain > 0) {
				out = append(out, x.server)
			}
			i++
			j++
		}
	}
	if d.sets == nil {
		d.sets = make(map[[2]*reach][]int32)
	}
	d.sets[k] = out
	return out
}

// reaches says whether r reaches server si encrypted and in plain.
func (r *reach) reaches(si int32) (enc, plain bool) {
	i, ok := slices.BinarySearchFunc(r.remotes, si, func(rc remoteCount, si int32) int { return int(rc.server - si) })
	if !ok {
		return false, false
	}
	return r.remotes[i].nEnc > 0, r.remotes[i].nPlain > 0
}

// dirty lists, in server order, the remote servers whose entries in host
// s, rebuilt over its cache entry pe, can differ from pe's: those that
// reachDiffs.setDiff gives for a part that changed (new, gone or other),
// and those whose meta changed. It uses hb.touched's array and leaves
// hb.slot of each listed server at 1: the caller clears them.
func (hb *hostBuilder) dirty(s *server, pe *hostEntry) []int32 {
	c := hb.c
	diff := c.diffs.setDiff
	dirty := hb.touched[:0]
	mark := func(list []int32) {
		for _, si := range list {
			if si != s.idx && hb.slot[si] == 0 {
				hb.slot[si] = 1
				dirty = append(dirty, si)
			}
		}
	}
	for _, ha := range hb.apps {
		np := ha.part
		var op *hostPart
		for _, q := range pe.parts {
			if q.app == np.app {
				op = q
				break
			}
		}
		if op == np {
			continue
		}
		var old *reach
		if op != nil {
			old = op.reach
		}
		mark(diff(old, np.reach))
	}
	for _, op := range pe.parts {
		if !slices.ContainsFunc(hb.apps, func(ha hostApp) bool { return ha.part.app == op.app }) {
			mark(diff(op.reach, nil))
		}
	}
	mark(c.diffs.metaDiff(pe.meta, c.meta))
	slices.Sort(dirty)
	return dirty
}

// patchDerived makes host s's peers and VXLAN entries, without their
// lists (schema 1.6), from those of its cache entry pe (derived too, or
// with none): the servers a changed part reaches
// otherwise, or whose meta changed, get their entries made again from the
// host's parts; every other entry is pe's. pe's slices themselves when
// nothing changed, as after a change that places a task on a server the
// host already reaches.
func (hb *hostBuilder) patchDerived(s *server, pe *hostEntry) ([]Peer, []VXLANEntry) {
	c := hb.c
	dirty := hb.dirty(s, pe)
	hb.remotes = hb.remotes[:0]
	for _, si := range dirty {
		hb.slot[si] = 0
		m := remoteMerge{server: si}
		for _, ha := range hb.apps {
			if r := ha.part.reach; r != nil {
				e, p := r.reaches(si)
				m.encParts += b2i(e)
				m.plainParts += b2i(p)
			}
		}
		hb.remotes = append(hb.remotes, m)
	}
	hb.touched = dirty
	peers := patchList(hb, pe.state.Peers, func(p *Peer) string { return p.Server }, func(m *remoteMerge, old *Peer) (Peer, bool, bool) {
		if m.encParts == 0 {
			return Peer{}, false, old == nil
		}
		rs := c.servers[m.server]
		p := Peer{Server: rs.spec.Name, PublicKey: rs.spec.PublicKey, NextPublicKey: rs.rot.next,
			Endpoint: netip.AddrPortFrom(rs.addr, uint16(rs.wgPort))}
		return p, true, old != nil && len(old.AllowedIPs) == 0 && old.PublicKey == p.PublicKey && old.NextPublicKey == p.NextPublicKey && old.Endpoint == p.Endpoint
	})
	vxlan := patchList(hb, pe.state.VXLAN, func(v *VXLANEntry) string { return v.Server }, func(m *remoteMerge, old *VXLANEntry) (VXLANEntry, bool, bool) {
		if m.plainParts == 0 {
			return VXLANEntry{}, false, old == nil
		}
		rs := c.servers[m.server]
		if hb.mac[m.server] == "" {
			hb.mac[m.server] = VTEPMAC(rs.addr)
		}
		v := VXLANEntry{Server: rs.spec.Name, Underlay: rs.addr, MAC: hb.mac[m.server]}
		return v, true, old != nil && len(old.Guests) == 0 && old.Underlay == v.Underlay && old.MAC == v.MAC
	})
	hb.touched = hb.touched[:0]
	if peers == nil {
		peers = []Peer{}
	}
	if vxlan == nil {
		vxlan = []VXLANEntry{}
	}
	return peers, vxlan
}

// serverMeta is what a server's peer and VXLAN entry show of it besides
// the guests: a server whose meta changed since the cache's last compile
// has its entries made again in every rebuilt host (patchDerived).
type serverMeta struct {
	addr      netip.Addr
	wgPort    int
	key, next string
}

// patchList is patchDerived's, for peers and for VXLAN entries: prev's
// entries (sorted by server name, given by name) with those of the dirty
// servers (hb.touched, how the host reaches them in hb.remotes) made again
// by entry (from how the host reaches the server and its entry in prev,
// if any: the new entry, whether there is one, and whether it is the same
// as old). The
// untouched runs of prev are copied whole.
func patchList[T any](hb *hostBuilder, prev []T, name func(*T) string, entry func(m *remoteMerge, old *T) (T, bool, bool)) []T {
	c := hb.c
	type edit struct {
		pos   int  // where the server's entry is or would be in prev
		found bool // prev has an entry for it
		has   bool // there is a new entry
		v     T
	}
	edits := make([]edit, len(hb.touched))
	same, n := true, len(prev)
	for j, si := range hb.touched {
		srv := c.servers[si].spec.Name
		e := &edits[j]
		// By index: a comparison that took the entry by value copied it
		// (a Peer is 104 bytes).
		e.pos = sort.Search(len(prev), func(i int) bool { return name(&prev[i]) >= srv })
		e.found = e.pos < len(prev) && name(&prev[e.pos]) == srv
		var old *T
		if e.found {
			old = &prev[e.pos]
			n--
		}
		var ok bool
		e.v, e.has, ok = entry(&hb.remotes[j], old)
		same = same && ok
		if e.has {
			n++
		}
	}
	if same {
		return prev
	}
	out := make([]T, 0, n)
	i := 0
	for j := range edits {
		e := &edits[j]
		out = append(out, prev[i:e.pos]...)
		if e.has {
			out = append(out, e.v)
		}
		i = e.pos
		if e.found {
			i++
		}
	}
	return append(out, prev[i:]...)
}
