package compile

import (
	"math"
	"net/netip"
	"slices"
	"strings"
)

// allocateNetworks gives every app its network: the one its spec names,
// else the one an earlier compile allocated, else the lowest free block of
// the pool. Allocation goes in app name order so that it is deterministic.
func (c *compiler) allocateNetworks(prev map[string]netip.Prefix, pool netip.Prefix) error {
	type owned struct {
		p   netip.Prefix
		app string
	}
	var taken []owned
	var todo []*app
	for _, a := range c.apps {
		field := "apps[" + a.name + "].network"
		if a.spec.Network != "" {
			p, err := netip.ParsePrefix(a.spec.Network)
			if err != nil {
				return inputErr(field, "%q is not a CIDR network", a.spec.Network)
			}
			if p != p.Masked() {
				return inputErr(field, "%s has host bits set (did you mean %s?)", p, p.Masked())
			}
			if n := usable(p); n < int64(a.numTasks) {
				return inputErr(field, "%s has room for %d tasks, the app has %d: give it a larger network", p, n, a.numTasks)
			}
			a.network = p
		} else if p, ok := prev[a.name]; ok && p.IsValid() && p == p.Masked() && usable(p) >= int64(a.addrsNeeded()) {
			// Kept from an earlier compile. One grown too small for the
			// app is dropped and a larger one allocated: its tasks get new
			// addresses, which beats failing.
			a.network = p
		} else {
			todo = append(todo, a)
			continue
		}
		taken = append(taken, owned{a.network, a.name})
	}
	cmpOwned := func(x, y owned) int {
		if c := x.p.Addr().Compare(y.p.Addr()); c != 0 {
			return c
		}
		if x.p.Bits() != y.p.Bits() {
			return x.p.Bits() - y.p.Bits()
		}
		return strings.Compare(x.app, y.app)
	}
	slices.SortFunc(taken, cmpOwned)
	// Prefixes are aligned blocks: two overlap only if one holds the
	// other, so in address order an overlap shows between neighbours.
	for i := 1; i < len(taken); i++ {
		if taken[i-1].p.Overlaps(taken[i].p) {
			x, y := taken[i-1], taken[i]
			return inputErr("apps["+y.app+"].network", "%s overlaps %s of app %s: app networks must not overlap", y.p, x.p, x.app)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if !pool.IsValid() {
		pool = DefaultPool
	}
	if !pool.Addr().Is4() || pool != pool.Masked() {
		return inputErr("pool", "%s is not an IPv4 network", pool)
	}
	poolStart := uint64(u32(pool.Addr()))
	poolEnd := poolStart + 1<<(32-pool.Bits()) // exclusive
	for _, a := range todo {
		bits := 24
		for bits > 0 && (int64(1)<<(32-bits))-6 < int64(a.addrsNeeded()) {
			bits--
		}
		size := uint64(1) << (32 - bits)
		if bits < pool.Bits() {
			return inputErr("apps["+a.name+"]", "%d addresses need a /%d network, larger than the pool %s", a.addrsNeeded(), bits, pool)
		}
		start := poolStart
		for {
			if start+size > poolEnd {
				return inputErr("pool", "%s has no free /%d left for app %s: name a network in the app or give a larger pool", pool, bits, a.name)
			}
			cand := netip.PrefixFrom(addr4(uint32(start)), bits)
			clash := -1
			for i, t := range taken {
				if t.p.Overlaps(cand) {
					clash = i
					break
				}
			}
			if clash < 0 {
				a.network = cand
				break
			}
			// Skip past the block in the way, staying aligned.
			end := uint64(u32(lastAddr(taken[clash].p))) + 1
			start = max(start+size, (end+size-1)/size*size)
		}
		taken = append(taken, owned{a.network, a.name})
		slices.SortFunc(taken, cmpOwned)
	}
	return nil
}

// usable is how many task addresses a network holds: all but the network
// address, and the broadcast address for IPv4.
func usable(p netip.Prefix) int64 {
	host := p.Addr().BitLen() - p.Bits()
	switch {
	case p.Addr().Is4() && host < 2:
		return 0
	case p.Addr().Is4():
		return int64(1)<<host - 2
	case host == 0:
		return 0
	case host >= 62:
		return math.MaxInt64
	default:
		return int64(1)<<host - 1
	}
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// taskAddrOK says whether a may be a task address in p.
func taskAddrOK(p netip.Prefix, a netip.Addr) bool {
	return taskAddrOKLast(p, lastAddr(p), a)
}

// taskAddrOKLast is taskAddrOK given p's last address (lastAddr(p)).
func taskAddrOKLast(p netip.Prefix, last, a netip.Addr) bool {
	if !p.Contains(a) || a == p.Addr() {
		return false
	}
	return !p.Addr().Is4() || a != last
}

// assignAddresses keeps every task's earlier address while it is still in
// its app's network (also for a task that moved: addresses are /32 routes,
// so they follow the task, and its peers' configuration stays the same),
// then gives the others the lowest free addresses.
func (c *compiler) assignAddresses() error {
	// Apps have networks of their own: the two halves of the apps (by
	// tasks) are assigned side by side, each with its own set of taken
	// addresses. An error of the first half is the one a run in turn
	// would meet first.
	mid, _, _ := c.splitApps()
	var first, second error
	sideBySide(len(c.tasks) < minSideBySide,
		func() { first = c.assignApps(c.apps[:mid], &c.scratch.used2) },
		func() { second = c.assignApps(c.apps[mid:], &c.scratch.used) })
	if first != nil {
		return first
	}
	return second
}

// assignApps is assignAddresses for apps, with used as its space.
func (c *compiler) assignApps(apps []*app, used *addrSet) error {
	for _, a := range apps {
		used.reset(a.network)
		last := lastAddr(a.network) // once per app, not per task
		addrOK := func(x netip.Addr) bool { return taskAddrOKLast(a.network, last, x) }
		for _, cl := range a.classes {
			for _, ti := range cl.tasks {
				t := &c.tasks[ti]
				if t.cur == nil || !addrOK(t.cur.Address) {
					continue
				}
				if used.has(t.cur.Address) {
					continue
				}
				t.addr = t.cur.Address
				used.add(t.addr)
			}
		}
		next := a.network.Addr().Next()
		for _, cl := range a.classes {
			for _, ti := range cl.tasks {
				t := &c.tasks[ti]
				if t.addr.IsValid() {
					continue
				}
				for {
					if !next.IsValid() || !addrOK(next) {
						return inputErr("apps["+a.name+"].network", "%s has no free address for task %s: give the app a larger network", a.network, t.id)
					}
					if !used.has(next) {
						break
					}
					next = next.Next()
				}
				t.addr = next
				used.add(next)
				next = next.Next()
			}
		}
	}
	return nil
}
