package compile

import "math/bits"

// candIndex finds, for the task being placed, what placeTask's scan of
// every server found: the keepTop best servers that can take a task of
// the class (cand.less order) and the first keepTop that cannot, by
// server index. Without it each task cost a look at every server (10
// million for 10,000 tasks on 1,000 servers); with it a few dozen steps.
//
// The servers that can take a task are kept in one tournament tree per
// spread group (one group without spreading): each node holds the best
// server under it by (runs, load, index), which within a group is the
// cand.less order (the group's task count is the same for all of them).
// The best servers overall are then found best first across the trees,
// the group's count compared between them. The servers that cannot take
// a task are a bit set. Only the server that took a task changes its
// keys (its load, whether it fits, whether it runs a task of the app):
// update walks its leaf up. The index is made anew for each class.
type candIndex struct {
	p     *placer
	trees []candTree // per spread group
	pos   []int32    // per server: its leaf in its group's tree
	unfit []uint64   // per server: cannot take a task of the class
	heap  []candNode
}

// candTree is a complete binary tree over the servers of one group (by
// index): node 1 the root, leaves from size on; each node the best server
// under it that can take a task, or -1.
type candTree struct {
	size int
	best []int32
}

// candNode is a node of one group's tree, waiting in the best-first walk.
type candNode struct {
	group int32
	node  int32
	k     cand // the node's best server, ranked
}

// reset makes the index for the current class from p's per-server state
// (ok, load, appCount, group).
func (x *candIndex) reset(p *placer, spread bool) {
	n := len(p.c.servers)
	x.p = p
	groups := 1
	if spread {
		groups = len(p.groups)
	}
	x.trees = x.trees[:0]
	counts := make([]int32, groups)
	x.pos = x.pos[:0]
	for i := range n {
		g := int32(0)
		if spread {
			g = p.group[i]
		}
		x.pos = append(x.pos, counts[g])
		counts[g]++
	}
	for _, c := range counts {
		size := 1
		for size < int(c) {
			size <<= 1
		}
		t := candTree{size: size, best: make([]int32, 2*size)}
		for j := range t.best {
			t.best[j] = -1
		}
		x.trees = append(x.trees, t)
	}
	x.unfit = x.unfit[:0]
	for range (n + 63) / 64 {
		x.unfit = append(x.unfit, 0)
	}
	for i := range n {
		t := &x.trees[x.group(int32(i))]
		if p.ok[i] {
			t.best[t.size+int(x.pos[i])] = int32(i)
		} else {
			x.unfit[i/64] |= 1 << (i % 64)
		}
	}
	for g := range x.trees {
		t := &x.trees[g]
		for j := t.size - 1; j >= 1; j-- {
			t.best[j] = x.better(t.best[2*j], t.best[2*j+1])
		}
	}
}

func (x *candIndex) group(i int32) int32 {
	if len(x.trees) == 1 {
		return 0
	}
	return x.p.group[i]
}

// better is the better of two servers of one group that can take a task
// (-1: none).
func (x *candIndex) better(a, b int32) int32 {
	switch {
	case a < 0:
		return b
	case b < 0:
		return a
	}
	p := x.p
	ra, rb := p.appCount[a] > 0, p.appCount[b] > 0
	if ra != rb {
		if ra {
			return b
		}
		return a
	}
	if c := p.load[a].cmp(p.load[b]); c != 0 {
		if c < 0 {
			return a
		}
		return b
	}
	return min(a, b)
}

// update takes in server i's new keys.
func (x *candIndex) update(i int32) {
	p := x.p
	if p.ok[i] {
		x.unfit[i/64] &^= 1 << (i % 64)
	} else {
		x.unfit[i/64] |= 1 << (i % 64)
	}
	t := &x.trees[x.group(i)]
	j := t.size + int(x.pos[i])
	t.best[j] = -1
	if p.ok[i] {
		t.best[j] = i
	}
	for j >>= 1; j >= 1; j >>= 1 {
		t.best[j] = x.better(t.best[2*j], t.best[2*j+1])
	}
}

// cand is server i as placeTask ranks it.
func (x *candIndex) cand(i int32, spread bool) cand {
	p := x.p
	k := cand{idx: i, runs: p.appCount[i] > 0, load: p.load[i]}
	if spread {
		k.group = p.groups[p.group[i]]
	}
	return k
}

// top appends to p.top the keepTop best servers that can take a task, best
// first, and to p.unfit the first keepTop that cannot, by index: what the
// scan of every server found.
func (x *candIndex) top(keepTop int, spread bool) {
	p := x.p
	for w, word := range x.unfit {
		for word != 0 && len(p.unfit) < keepTop {
			b := bits.TrailingZeros64(word)
			p.unfit = append(p.unfit, int32(w*64+b))
			word &= word - 1
		}
		if len(p.unfit) == keepTop {
			break
		}
	}
	x.heap = x.heap[:0]
	for g := range x.trees {
		if b := x.trees[g].best[1]; b >= 0 {
			x.push(candNode{int32(g), 1, x.cand(b, spread)})
		}
	}
	for len(p.top) < keepTop && len(x.heap) > 0 {
		// The node's best server is the next best overall: go down to
		// its leaf, leaving the other child at each level to the walk.
		nd := x.pop()
		t := &x.trees[nd.group]
		for j := int(nd.node); j < t.size; {
			l := 2 * j
			next, other := l, l+1
			if t.best[l] != nd.k.idx {
				next, other = l+1, l
			}
			if b := t.best[other]; b >= 0 {
				x.push(candNode{nd.group, int32(other), x.cand(b, spread)})
			}
			j = next
		}
		p.top = append(p.top, nd.k)
	}
}

func (x *candIndex) push(nd candNode) {
	x.heap = append(x.heap, nd)
	j := len(x.heap) - 1
	for j > 0 {
		parent := (j - 1) / 2
		if !x.heap[j].k.less(&x.heap[parent].k) {
			break
		}
		x.heap[j], x.heap[parent] = x.heap[parent], x.heap[j]
		j = parent
	}
}

func (x *candIndex) pop() candNode {
	h := x.heap
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	j := 0
	for {
		l, r, m := 2*j+1, 2*j+2, j
		if l < len(h) && h[l].k.less(&h[m].k) {
			m = l
		}
		if r < len(h) && h[r].k.less(&h[m].k) {
			m = r
		}
		if m == j {
			break
		}
		h[j], h[m] = h[m], h[j]
		j = m
	}
	x.heap = h
	return top
}
