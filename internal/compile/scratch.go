package compile

import (
	"net/netip"
	"strconv"
	"strings"
	"sync"
)

// scratch is working space of a compile that no plan keeps: the tasks
// being compiled, the addresses taken in an app's network. A fleet of 10,000 tasks makes about 2.5 MB of them,
// all holding pointers; a recompile after a small change allocates
// little else besides what changed, so giving them back for the next
// compile (instead of leaving them to the collector) makes the collector
// run less often (issue 19, item 5). Nothing that outlives a compile may
// point into them: Plans copy what they show of a task (planTasks), and
// the cache's entries keep task indexes, never tasks.
type scratch struct {
	tasks       []task
	used, used2 addrSet // used2: for the second half (assignAddresses)
}

var scratchPool = sync.Pool{New: func() any {
	return &scratch{}
}}

// getScratch gives a compile its scratch space; a variable so that a test
// can give a compile new space.
var getScratch = func() *scratch { return scratchPool.Get().(*scratch) }

// taskSlice is an empty task list with room for n tasks.
func (sc *scratch) taskSlice(n int) []task {
	if cap(sc.tasks) < n {
		sc.tasks = make([]task, 0, n)
	}
	return sc.tasks[:0]
}

// put gives sc back once c is done with it. The tasks are cleared so that
// what they point to (specs, assignments, reasons) is not kept alive by
// the pool.
func (sc *scratch) put(c *compiler) {
	if cap(c.tasks) > cap(sc.tasks) {
		sc.tasks = c.tasks
	}
	clear(sc.tasks[:cap(sc.tasks)])
	sc.tasks = sc.tasks[:0]
	sc.used.reset(netip.Prefix{})
	sc.used2.reset(netip.Prefix{})
	c.tasks, c.scratch = nil, nil
	scratchPool.Put(sc)
}

// taskIDs are the IDs of tasks 0..n-1 of class cl of app a. With a
// cache they are the last compile's when it had as many or more: an ID is
// made of names and an index only, and formatting 10,000 of them took
// 0.23 of the 3.85 ms of CPU that a recompile after a small change spent
// outside the host builders (issue 19, thirteenth session).
func (c *compiler) taskIDs(a, cl string, n int) []string {
	if c.ids == nil {
		return taskIDs(nil, a, cl, n)
	}
	key := a + "/" + cl
	ids := c.oldIDs[key]
	if len(ids) < n || len(ids) > 2*n+64 { // a class that shrank much lets go of its IDs
		ids = taskIDs(make([]string, 0, n), a, cl, n)
	}
	c.ids[key] = ids
	return ids[:n:n]
}

// taskIDs appends the IDs of tasks 0..n-1 of class cl of app a
// (spec.TaskID) to ids, made as substrings of one string instead of one
// allocation per task.
func taskIDs(ids []string, a, cl string, n int) []string {
	if n == 0 {
		return ids
	}
	prefix := len(a) + len(cl) + 2
	size := 0
	for k := range n {
		size += prefix + digits(k)
	}
	var b strings.Builder
	b.Grow(size)
	var num [20]byte
	for k := range n {
		b.WriteString(a)
		b.WriteByte('/')
		b.WriteString(cl)
		b.WriteByte('/')
		b.Write(strconv.AppendInt(num[:0], int64(k), 10))
	}
	all := b.String()
	off := 0
	for k := range n {
		end := off + prefix + digits(k)
		ids = append(ids, all[off:end])
		off = end
	}
	return ids
}

// digits is the number of decimal digits of k >= 0.
func digits(k int) int {
	n := 1
	for k >= 10 {
		k /= 10
		n++
	}
	return n
}

// addrSet is the addresses taken in one network (assignAddresses): a bit
// per address for an IPv4 network of up to 65,536 addresses (the app
// networks the default pool gives), a map for any other. Only addresses
// in the network are given to it.
type addrSet struct {
	base uint32   // the network's first address, while bits is in use
	bits []uint64 // nil: m is in use
	buf  []uint64 // bits' room, kept across networks and compiles
	m    map[netip.Addr]struct{}
}

// reset empties s for the addresses of p.
func (s *addrSet) reset(p netip.Prefix) {
	clear(s.m)
	s.bits = nil
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() < 16 {
		if s.m == nil {
			s.m = map[netip.Addr]struct{}{}
		}
		return
	}
	n := (1<<(32-p.Bits()) + 63) / 64
	if cap(s.buf) < n {
		s.buf = make([]uint64, n)
	}
	s.bits = s.buf[:n]
	clear(s.bits)
	s.base = u32(p.Addr())
}

func (s *addrSet) has(a netip.Addr) bool {
	if s.bits == nil {
		_, ok := s.m[a]
		return ok
	}
	i := u32(a) - s.base
	return s.bits[i/64]&(1<<(i%64)) != 0
}

func (s *addrSet) add(a netip.Addr) {
	if s.bits == nil {
		s.m[a] = struct{}{}
		return
	}
	i := u32(a) - s.base
	s.bits[i/64] |= 1 << (i % 64)
}
