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
	tasks []task
	used  map[netip.Addr]struct{}
}

var scratchPool = sync.Pool{New: func() any {
	return &scratch{used: map[netip.Addr]struct{}{}}
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
	clear(sc.used)
	c.tasks, c.scratch = nil, nil
	scratchPool.Put(sc)
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
