package compile

import (
	"net/netip"
	"slices"
	"sync"
)

// reach is what the hosts of one app whose local tasks have routes to the
// same (class, encryption) pairs reach on every server: the app's tasks of
// those classes, grouped by server, as peers' allowed IPs (encrypted) and
// VXLAN guests (plain). A host's part takes every server's lists but its
// own (hostPart.each), so one reach serves every host with that set of
// pairs, wherever it is: an app of 200 tasks on 200 hosts has a handful
// of reaches, not 200 copies of nearly the same lists. Its slices are
// read-only, shared by the parts and the host states that take them.
type reach struct {
	remotes []remoteCount // servers with a task in the lists, by index
	// The guests by server (in remotes' order), then by address.
	enc   []netip.Prefix
	plain []netip.Addr
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
// key (two bytes per class in spec order: plain, encrypted). Two passes
// over the app's tasks by address: count per server, then fill lists of
// the exact size; each server's lists come out sorted.
func (hb *hostBuilder) makeReach(a *app, key []byte) *reach {
	c := hb.c
	touched := hb.touched[:0]
	nEnc, nPlain := 0, 0
	for _, ti := range a.byAddr {
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
			nPlain++
		}
		if k[1] != 0 {
			hb.nEnc[t.server]++
			nEnc++
		}
	}
	slices.Sort(touched)
	r := &reach{enc: make([]netip.Prefix, nEnc), plain: make([]netip.Addr, nPlain), remotes: make([]remoteCount, len(touched))}
	// nEnc and nPlain become each server's next free position.
	var oe, op int32
	for i, s := range touched {
		r.remotes[i] = remoteCount{server: s, nEnc: hb.nEnc[s], nPlain: hb.nPlain[s]}
		hb.nEnc[s], hb.nPlain[s] = oe, op
		oe += r.remotes[i].nEnc
		op += r.remotes[i].nPlain
	}
	for _, ti := range a.byAddr {
		t := &c.tasks[ti]
		k := key[2*t.class.pos:]
		if k[0] != 0 {
			r.plain[hb.nPlain[t.server]] = t.addr
			hb.nPlain[t.server]++
		}
		if k[1] != 0 {
			r.enc[hb.nEnc[t.server]] = netip.PrefixFrom(t.addr, t.addr.BitLen())
			hb.nEnc[t.server]++
		}
	}
	for _, s := range touched {
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
