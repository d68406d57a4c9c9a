package compile

import (
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"

	"github.com/corridor-dev/corridor/internal/spec"
)

// Why a server cannot take a task of a class at all, whatever its load.
const (
	eligible uint8 = iota
	notDown
	notDraining
	notLabels
)

// place keeps the tasks that may stay where they run, then places the
// others one by one: apps by name, classes in spec order, indexes up.
func (c *compiler) place() error {
	// The servers' task lists get the room of the tasks Current has on
	// them, from one array, before the tasks that stay are put there.
	total := 0
	for _, s := range c.servers {
		total += int(s.nCur)
	}
	room := make([]int32, total)
	for _, s := range c.servers {
		s.guestIdx, room = room[:0:s.nCur], room[s.nCur:]
	}
	for _, a := range c.apps {
		for _, cl := range a.classes {
			for _, ti := range cl.tasks {
				c.keep(ti)
			}
		}
	}
	n := len(c.servers)
	p := placer{
		c:          c,
		appCount:   make([]int32, n),
		elig:       make([]uint8, n),
		ok:         make([]bool, n),
		load:       make([]frac, n),
		group:      make([]int32, n),
		moreLoaded: make([]string, n),
	}
	for _, a := range c.apps {
		for _, ti := range a.tasks {
			if s := c.tasks[ti].server; s >= 0 {
				p.appCount[s]++
			}
		}
		for _, cl := range a.classes {
			if err := p.placeClass(a, cl); err != nil {
				return err
			}
		}
		for _, ti := range a.tasks {
			if s := c.tasks[ti].server; s >= 0 {
				p.appCount[s] = 0
			}
		}
	}
	return nil
}

// keep leaves t on its earlier server if that server is up and not
// draining, still carries the class's labels and still has room; kept tasks are counted before any
// new task is placed.
func (c *compiler) keep(ti int32) {
	t := &c.tasks[ti]
	if t.cur == nil {
		return
	}
	s := t.curSrv
	switch {
	case t.cur.Server == "":
		t.moved = "was pending"
	case s == nil:
		t.moved = "moved from " + t.cur.Server + " (no longer a server)"
	case s.state == spec.ServerDown:
		t.moved = "moved from " + s.spec.Name + " (down)"
	case s.state == spec.ServerDraining && !s.keep:
		t.moved = "moved from " + s.spec.Name + " (draining)"
	case labelMismatch(t.class, s) != "":
		t.moved = "moved from " + s.spec.Name + " (" + labelMismatch(t.class, s) + ")"
	case !fits(s, t.class):
		t.moved = "moved from " + s.spec.Name + " (no longer has room)"
	default:
		c.put(ti, s)
		if s.keptWhy == "" {
			s.keptWhy = "kept on " + s.spec.Name + " (already running there)"
		}
		t.reason = Reason{Kept: true, Chosen: s.keptWhy}
	}
}

func (c *compiler) put(ti int32, s *server) {
	t := &c.tasks[ti]
	t.server = s.idx
	s.usedCPU += t.class.cpu
	s.usedMem += t.class.mem
	s.guestIdx = append(s.guestIdx, ti)
}

func fits(s *server, cl *class) bool {
	return s.usedCPU+cl.cpu <= s.capCPU && s.usedMem+cl.mem <= s.capMem
}

// labelMismatch says which of the class's labels s lacks, or "".
func labelMismatch(cl *class, s *server) string {
	for _, k := range cl.labels {
		want := cl.spec.Placement.Labels[k]
		got, ok := s.spec.Labels[k]
		if !ok {
			return "missing label " + k + "=" + want
		}
		if got != want {
			return "has " + k + "=" + got + ", needs " + k + "=" + want
		}
	}
	return ""
}

// placer holds the per-app and per-class indexes of one placement run.
type placer struct {
	c        *compiler
	appCount []int32 // tasks of the current app per server
	elig     []uint8 // per server, for the current class
	ok       []bool  // per server: eligible and fits one more task of the class
	load     []frac  // per server: load after one more task of the class
	group    []int32 // spread group per server, for the current class
	groups   []int32 // tasks of the current class per spread group
	gnames   []string
	top      []cand // best candidates so far, best first
	unfit    []int32
	// moreLoaded is, per server, loserWhy's "more loaded (...)" for the
	// current class, made when first needed and dropped by update: the
	// same runners-up come back task after task.
	moreLoaded []string
	idx        candIndex // the servers by rank for the current class
	// asLoaded is loserWhy's "as loaded; <winner> comes first by name"
	// for the task being placed.
	asLoaded string
}

// frac is an exact non-negative fraction; loads are compared with integer
// arithmetic so that no float rounding can change a placement.
type frac struct{ num, den uint64 }

func (a frac) cmp(b frac) int {
	h1, l1 := bits.Mul64(a.num, b.den)
	h2, l2 := bits.Mul64(b.num, a.den)
	switch {
	case h1 != h2:
		return cmpU(h1, h2)
	default:
		return cmpU(l1, l2)
	}
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// pct is the fraction in whole percent, rounded down.
func (a frac) pct() int {
	if a.num == 0 {
		return 0
	}
	hi, lo := bits.Mul64(a.num, 100)
	if hi >= a.den {
		return 100 * int(min(a.num/a.den, 1<<20))
	}
	q, _ := bits.Div64(hi, lo, a.den)
	return int(q)
}

func ratio(used, capacity int64) frac {
	if capacity <= 0 {
		return frac{0, 1}
	}
	return frac{uint64(used), uint64(capacity)}
}

// cand is a server that fits the task, with its ranking keys.
type cand struct {
	idx   int32
	runs  bool  // already runs a task of the app
	group int32 // tasks of the class in the server's spread group
	load  frac  // max of cpu and memory fractions after placement
}

// update recomputes whether server i can take one more task of cl and its
// load if it does. Only the server that just took a task changes, so the
// scan for each task reads these instead of recomputing them.
func (p *placer) update(i int32, cl *class) {
	s := p.c.servers[i]
	p.ok[i] = p.elig[i] == eligible && fits(s, cl)
	p.load[i] = loadAfter(s, cl)
	p.moreLoaded[i] = ""
}

// loadAfter is the larger of the cpu and memory fractions of s once a task
// of cl is added.
func loadAfter(s *server, cl *class) frac {
	l := ratio(s.usedCPU+cl.cpu, s.capCPU)
	if m := ratio(s.usedMem+cl.mem, s.capMem); m.cmp(l) > 0 {
		return m
	}
	return l
}

// usage is "cpu N%, mem M%" of s once a task of cl is added (after=true)
// or as it is.
func usage(s *server, cl *class, after bool) string {
	var dc, dm int64
	if after {
		dc, dm = cl.cpu, cl.mem
	}
	return string(appendUsage(make([]byte, 0, 24), s, dc, dm))
}

// appendUsage appends "cpu N%, mem M%" of s with dc and dm added to b
// (usage without fmt: it is written for every runner-up of every task).
func appendUsage(b []byte, s *server, dc, dm int64) []byte {
	b = append(b, "cpu "...)
	b = strconv.AppendInt(b, int64(ratio(s.usedCPU+dc, s.capCPU).pct()), 10)
	b = append(b, "%, mem "...)
	b = strconv.AppendInt(b, int64(ratio(s.usedMem+dm, s.capMem).pct()), 10)
	return append(b, '%')
}

func (a *cand) less(b *cand) bool {
	if a.runs != b.runs {
		return !a.runs
	}
	if a.group != b.group {
		return a.group < b.group
	}
	if c := a.load.cmp(b.load); c != 0 {
		return c < 0
	}
	return a.idx < b.idx
}

func (p *placer) placeClass(a *app, cl *class) error {
	c := p.c
	// A class whose tasks all stayed needs no look at the fleet: the
	// indexes below are per class and start afresh for the next one.
	if !slices.ContainsFunc(cl.tasks, func(ti int32) bool { return c.tasks[ti].server < 0 }) {
		return nil
	}
	spread := cl.spec.Placement.SpreadBy
	p.groups = p.groups[:0]
	p.gnames = p.gnames[:0]
	var gidx map[string]int32
	if spread != "" {
		gidx = map[string]int32{}
	}
	for i, s := range c.servers {
		switch {
		case s.state == spec.ServerDown:
			p.elig[i] = notDown
		case s.state == spec.ServerDraining:
			p.elig[i] = notDraining
		case labelMismatch(cl, s) != "":
			p.elig[i] = notLabels
		default:
			p.elig[i] = eligible
		}
		if spread != "" {
			// A server without the label forms the group of the empty
			// value: it is spread against like any other.
			v := s.spec.Labels[spread]
			g, ok := gidx[v]
			if !ok {
				g = int32(len(p.groups))
				gidx[v] = g
				p.groups = append(p.groups, 0)
				p.gnames = append(p.gnames, v)
			}
			p.group[i] = g
		}
	}
	for i := range c.servers {
		p.update(int32(i), cl)
	}
	if spread != "" {
		for _, ti := range cl.tasks {
			if s := c.tasks[ti].server; s >= 0 {
				p.groups[p.group[s]]++
			}
		}
	}
	p.idx.reset(p, spread != "")
	for _, ti := range cl.tasks {
		if c.tasks[ti].server >= 0 {
			continue
		}
		if err := p.placeTask(a, cl, ti, spread != ""); err != nil {
			return err
		}
	}
	return nil
}

func (p *placer) placeTask(a *app, cl *class, ti int32, spread bool) error {
	c := p.c
	t := &c.tasks[ti]
	keepTop := len(c.servers)
	if m := c.maxRejected; m >= 0 && m < len(c.servers) {
		keepTop = m + 1
	}
	keepTop = max(keepTop, 1)
	p.top = p.top[:0]
	p.unfit = p.unfit[:0]
	p.idx.top(keepTop, spread)
	if scanCheck {
		if err := p.checkScan(keepTop, spread); err != nil {
			return err
		}
	}
	if len(p.top) == 0 {
		return p.pend(a, cl, ti, p.noFit(a, cl, t))
	}
	best := p.top[0]
	s := c.servers[best.idx]
	c.put(ti, s)
	p.update(best.idx, cl)
	p.appCount[best.idx]++
	p.idx.update(best.idx)
	if spread {
		p.groups[p.group[best.idx]]++
	}

	var why []string
	if t.moved != "" {
		why = append(why, t.moved)
	}
	if !best.runs {
		why = append(why, "runs no task of "+a.name+" yet")
	} else {
		why = append(why, "every server that fits already runs a task of "+a.name)
	}
	if spread {
		why = append(why, cl.spec.Placement.SpreadBy+"="+p.gnames[p.group[best.idx]]+" has the fewest tasks of "+cl.name+" ("+strconv.Itoa(int(best.group))+")")
	}
	// s already holds the task: its usage now is its usage after placement.
	why = append(why, "least loaded that fits ("+usage(s, cl, false)+")")
	t.reason.Chosen = strings.Join(why, "; ")

	// The runners-up first, then servers that cannot take the task.
	p.asLoaded = ""
	rej := make([]Rejection, 0, min(keepTop-1, len(p.top)-1+len(p.unfit)))
	for i := 1; i < len(p.top); i++ {
		rej = append(rej, Rejection{c.servers[p.top[i].idx].spec.Name, p.loserWhy(a, cl, &p.top[i], &best)})
	}
	for _, i := range p.unfit {
		if len(rej) == keepTop-1 {
			break
		}
		rej = append(rej, Rejection{c.servers[i].spec.Name, p.unfitWhy(cl, c.servers[i])})
	}
	slices.SortFunc(rej, func(x, y Rejection) int { return strings.Compare(x.Server, y.Server) })
	if len(rej) == 0 {
		rej = nil
	}
	t.reason.Rejected = rej
	t.reason.Omitted = len(c.servers) - 1 - len(rej)
	return nil
}

// scanCheck makes placeTask check the index against a scan of every
// server (checkScan), for the tests.
var scanCheck = false

// checkScan is what placeTask did before candIndex: a scan of every server
// for the keepTop best that can take a task and the first keepTop that
// cannot. It returns an error if p.top and p.unfit, made by the index,
// differ from what it finds.
func (p *placer) checkScan(keepTop int, spread bool) error {
	var top []cand
	var unfit []int32
	for i := range p.c.servers {
		if !p.ok[i] {
			if len(unfit) < keepTop {
				unfit = append(unfit, int32(i))
			}
			continue
		}
		k := cand{idx: int32(i), runs: p.appCount[i] > 0, load: p.load[i]}
		if spread {
			k.group = p.groups[p.group[i]]
		}
		j := len(top)
		for j > 0 && k.less(&top[j-1]) {
			j--
		}
		top = slices.Insert(top, j, k)
		if len(top) > keepTop {
			top = top[:keepTop]
		}
	}
	if !slices.Equal(top, p.top) || !slices.Equal(unfit, p.unfit) {
		return fmt.Errorf("placement index: top %v unfit %v, the scan finds top %v unfit %v", p.top, p.unfit, top, unfit)
	}
	return nil
}

func (p *placer) loserWhy(a *app, cl *class, l, w *cand) string {
	switch {
	case l.runs && !w.runs:
		return "already runs a task of " + a.name
	case l.group > w.group:
		return cl.spec.Placement.SpreadBy + "=" + p.gnames[p.group[l.idx]] + " already has " + strconv.Itoa(int(l.group)) + " tasks of " + cl.name
	case l.load.cmp(w.load) > 0:
		if p.moreLoaded[l.idx] == "" {
			b := append(make([]byte, 0, 40), "more loaded ("...)
			b = appendUsage(b, p.c.servers[l.idx], cl.cpu, cl.mem)
			p.moreLoaded[l.idx] = string(append(b, ')'))
		}
		return p.moreLoaded[l.idx]
	default:
		if p.asLoaded == "" {
			p.asLoaded = "as loaded; " + p.c.servers[w.idx].spec.Name + " comes first by name"
		}
		return p.asLoaded
	}
}

func (p *placer) unfitWhy(cl *class, s *server) string {
	switch p.elig[s.idx] {
	case notDown:
		return "down"
	case notDraining:
		return "draining"
	case notLabels:
		return labelMismatch(cl, s)
	}
	var parts []string
	if free := s.capCPU - s.usedCPU; cl.cpu > free {
		parts = append(parts, "needs "+fmtCPU(cl.cpu)+" cpu, "+fmtCPU(free)+" free")
	}
	if free := s.capMem - s.usedMem; cl.mem > free {
		parts = append(parts, "needs "+fmtBytes(cl.mem)+" memory, "+fmtBytes(free)+" free")
	}
	return "does not fit: " + strings.Join(parts, "; ")
}

// noFit builds the error for a task no server can take, naming the
// eligible server that came closest: the one whose shortfall is the
// smallest part of the request.
func (p *placer) noFit(a *app, cl *class, t *task) error {
	e := &PlacementError{App: a.name, Class: cl.name, Task: t.id,
		Need: spec.Resources{CPU: spec.MilliCPU(cl.cpu), Memory: spec.Bytes(cl.mem)}}
	var best *server
	var bestShort frac
	states := map[uint8]int{}
	for i, s := range p.c.servers {
		if p.elig[i] != eligible {
			states[p.elig[i]]++
			continue
		}
		short := shortfall(s.capCPU-s.usedCPU, cl.cpu)
		if m := shortfall(s.capMem-s.usedMem, cl.mem); m.cmp(short) > 0 {
			short = m
		}
		if best == nil || short.cmp(bestShort) < 0 {
			best, bestShort = s, short
		}
	}
	if best != nil {
		e.Closest = best.spec.Name
		e.Free = spec.Resources{CPU: spec.MilliCPU(best.capCPU - best.usedCPU), Memory: spec.Bytes(best.capMem - best.usedMem)}
		return e
	}
	switch {
	case len(p.c.servers) == 0:
		e.NoCandidate = "there are no servers"
	case states[notLabels] > 0:
		var want []string
		for _, k := range cl.labels {
			want = append(want, k+"="+cl.spec.Placement.Labels[k])
		}
		e.NoCandidate = "no ready server has labels " + strings.Join(want, ",")
	default:
		e.NoCandidate = fmt.Sprintf("no server is ready (%d down, %d draining)", states[notDown], states[notDraining])
	}
	return e
}

// shortfall is the part of need that free lacks, as a fraction of need.
func shortfall(free, need int64) frac {
	if need <= 0 || free >= need {
		return frac{0, 1}
	}
	return frac{uint64(need - max(free, 0)), uint64(need)}
}
