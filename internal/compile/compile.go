package compile

import (
	"cmp"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/corridor-dev/corridor/internal/spec"
)

// Limits that keep a mistaken or hostile input from exhausting memory: the
// compiler's output grows with the number of tasks and of paths.
const (
	MaxTasks = 1 << 20
	MaxPaths = 1 << 22
)

// DefaultMaxRejected is how many other servers a Reason lists when Input
// sets no MaxRejected. Listing every server for every task would make a
// plan of 10,000 tasks on 1,000 servers hold ten million rejections.
const DefaultMaxRejected = 16

// server is the compiler's working view of one spec.Server.
type server struct {
	idx      int32 // position in name order
	spec     *spec.Server
	addr     netip.Addr
	state    string
	wgPort   int
	rot      rotation // the key rotation its states show
	capCPU   int64
	capMem   int64
	usedCPU  int64
	usedMem  int64
	guestIdx []int32 // tasks placed here, in task order
	nCur     int32   // tasks Current has here (loadCurrent): guestIdx's room
	keptWhy  string  // Reason.Chosen of a task kept here, made once
	// keep: draining, but its tasks stay this compile (Input.Keep).
	keep bool
}

// app is the compiler's working view of one spec.App.
type app struct {
	name     string
	spec     *spec.App
	network  netip.Prefix
	classes  []*class // spec order
	byName   []*class // name order
	rules    []rule   // merged per (from, to, protocol), sorted by class names
	tasks    []int32  // in plan order: class name, then index
	byAddr   []int32  // tasks by address: the classes' destination lists (classDests)
	reaches  reachSet // the remote lists of its hosts' parts (reach.go)
	numTasks int
	entry    *appEntry // what the cache has or gets for this app
	netRank  int       // position in network order
	pending  []int32   // tasks no server takes, in plan order (pending.go)
	cross    []int     // indexes of the spec's rules to imported services (links.go)
	links    []int     // indexes in compiler.links of the links from this app
	imports  []importEnv
	// Ingress (ingress.go): the entry hosts of the app's published
	// ports, in server order, and each one's address in the network.
	entries []int32
	sources []netip.Addr
}

// class is one task class of an app.
type class struct {
	pos      int // position in spec order
	name     string
	spec     *spec.Class
	envName  string // spec.PeersEnvName
	cpu, mem int64
	labels   []string // sorted keys of Placement.Labels
	tasks    []int32  // by index
	out      []int    // rules from this class, in rule order
	peersEnv []envVar // CORRIDOR_PEERS_* this class's tasks get
	// dests are the class's tasks by address with their servers: the
	// destinations of every host's route groups to this class (hosts.go).
	dests []RouteDest
	addrs []netip.Addr // addresses of all tasks, sorted
}

type envVar struct{ key, value string }

// rule is a spec.Rule resolved to classes, with its ports sorted.
type rule struct {
	from, to *class
	protocol string
	ports    []int
	encrypt  bool
}

// task is one task being compiled.
type task struct {
	id     string
	app    *app
	class  *class
	index  int
	server int32 // -1 until placed
	addr   netip.Addr
	cur    *Assignment
	curSrv *server // cur's server, nil if no longer one (loadCurrent)
	moved  string  // why the task left the server of cur, if it did
	reason Reason
	why    string // why no server takes it, when pending (pending.go)
}

type compiler struct {
	servers     []*server
	byName      map[string]*server
	apps        []*app
	tasks       []task // placement order: app name, class spec order, index
	maxRejected int
	// links are the rules across apps (app to app), resolved; unresolved
	// the rules to imported services that have no path (links.go).
	links        []link
	unresolved   []Unresolved
	allowPending bool
	pending      []int32 // tasks no server takes, in placement order (pending.go)
	// With a cache (hosts.go, reach.go): each server's meta, and the
	// differences from earlier compiles' reaches and metas.
	meta  []serverMeta
	diffs reachDiffs
	// The apps in network order, and each task's app's rank in it, for
	// the host builders (hosts.go).
	byNet []*app
	rank  []int32
	// scratch is space reused from compile to compile (scratch.go).
	scratch *scratch
	// ids are the task IDs of each class ("app/class/" to the IDs of
	// tasks 0..n-1): with a cache, the last compile's, and this compile's
	// for the cache to keep (nil without one).
	oldIDs, ids map[string][]string
}

// Compile places every task of in.Apps on in.Servers, allocates networks and
// addresses, and derives the paths and every host's desired state. It is
// pure and deterministic: the same Input, in any order, gives a Plan that
// marshals to the same bytes. The Plan is read-only: its slices may share
// backing arrays.
//
// Errors are *InputError for input the compiler cannot use and
// *PlacementError when a task fits on no server. A caller that compiles
// again and again after small changes should use a Cache.
func Compile(in Input) (*Plan, error) {
	return new(Cache).compile(in, false)
}

// compile is Compile; with memo it reuses and updates k's entries.
func (k *Cache) compile(in Input, memo bool) (*Plan, error) {
	c := &compiler{maxRejected: in.MaxRejected, allowPending: in.Pending}
	if memo {
		c.oldIDs, c.ids = k.ids, make(map[string][]string, len(k.ids))
	}
	sc := getScratch()
	defer sc.put(c)
	c.scratch = sc
	if c.maxRejected == 0 {
		c.maxRejected = DefaultMaxRejected
	}
	// Servers and apps are loaded side by side (neither reads the
	// other); a servers error is reported first, as when loaded in turn.
	var srvErr, appErr error
	sideBySide(len(in.Servers) < minSideBySide,
		func() { srvErr = c.loadServers(in.Servers) },
		func() { appErr = c.loadApps(in.Apps) })
	if srvErr != nil {
		return nil, srvErr
	}
	if appErr != nil {
		return nil, appErr
	}
	for _, name := range in.Keep {
		if s := c.byName[name]; s != nil {
			s.keep = true
		}
	}
	if err := c.loadCurrent(in.Current); err != nil {
		return nil, err
	}
	c.entryHosts()
	if err := c.allocateNetworks(in.Networks, in.Pool); err != nil {
		return nil, err
	}
	if err := c.checkOutside(in.Pool); err != nil {
		return nil, err
	}
	if err := c.checkPublish(in.Pool); err != nil {
		return nil, err
	}
	if err := c.place(); err != nil {
		return nil, err
	}
	if err := c.assignAddresses(); err != nil {
		return nil, err
	}
	if err := c.assignIngressSources(); err != nil {
		return nil, err
	}
	c.setAside()
	// Nothing fails from here on: the cache is only changed by a compile
	// that returns a plan.
	k.prepare(c, memo)
	c.group(memo)
	// The paths and the host states are independent (paths writes only
	// the app entries' paths, hosts their parts and its own scratch
	// space; both only read the placement): on a machine with a second
	// core they are made side by side, a third of the work of a full
	// compile off the critical path.
	// The plan's task list (only read from the tasks) is made there too:
	// after a small change through the cache the paths are little work,
	// and the task list is then off the critical path as well.
	// Without memo k is new, and has no task lists to keep.
	var paths Paths
	var tasks TaskList
	var hosts []HostState
	var entries []*hostEntry
	sideBySide(len(c.tasks) < minSideBySide,
		func() {
			paths, tasks = c.paths(), c.planTasks(k.tasks)
		},
		func() {
			hosts, entries = c.hosts(k, memo)
			c.addIngress(hosts)
		})
	plan := &Plan{
		Networks:   c.networks(),
		Tasks:      tasks,
		Paths:      paths,
		Hosts:      hosts,
		Unresolved: c.unresolved,
		Pending:    c.pendingTasks(),
	}
	if memo {
		k.commit(c, entries, tasks)
	}
	return plan, nil
}

func (c *compiler) loadServers(in []spec.Server) error {
	c.servers = make([]*server, 0, len(in))
	c.byName = make(map[string]*server, len(in))
	addrs := make(map[netip.Addr]string, len(in))
	// Checked in name order, so that the error reported does not depend on
	// the order of the input either.
	for _, i := range byName(len(in), func(i int) string { return in[i].Name }) {
		s := &in[i]
		field := "servers[" + s.Name + "]"
		if s.Name == "" {
			return inputErr("servers["+itoa(i)+"].name", "is empty")
		}
		if _, dup := c.byName[s.Name]; dup {
			return inputErr(field, "server %s is listed twice", s.Name)
		}
		addr, err := netip.ParseAddr(s.Address)
		if err != nil || addr.Zone() != "" {
			return inputErr(field+".address", "%q is not an IP address", s.Address)
		}
		addr = addr.Unmap()
		if other, dup := addrs[addr]; dup {
			return inputErr(field+".address", "%s is also the address of server %s", addr, other)
		}
		addrs[addr] = s.Name
		if s.Capacity.CPU < 0 || s.Capacity.Memory < 0 {
			return inputErr(field+".capacity", "is negative")
		}
		state := s.State
		switch state {
		case "":
			state = spec.ServerReady
		case spec.ServerReady, spec.ServerDraining, spec.ServerDown:
		default:
			return inputErr(field+".state", "%q is not one of ready, draining, down", s.State)
		}
		port := s.WireGuardPort
		if port == 0 {
			port = DefaultWireGuardPort
		}
		if port < 1 || port > 65535 {
			return inputErr(field+".wireguardPort", "%d is not a UDP port", s.WireGuardPort)
		}
		if s.KeyGeneration < 0 {
			return inputErr(field+".keyGeneration", "%d is negative", s.KeyGeneration)
		}
		rot, err := loadRotation(field, s)
		if err != nil {
			return err
		}
		sv := &server{spec: s, addr: addr, state: state, wgPort: port, rot: rot,
			capCPU: int64(s.Capacity.CPU), capMem: int64(s.Capacity.Memory)}
		c.servers = append(c.servers, sv)
		c.byName[s.Name] = sv
	}
	slices.SortFunc(c.servers, func(a, b *server) int { return strings.Compare(a.spec.Name, b.spec.Name) })
	for i, s := range c.servers {
		s.idx = int32(i)
	}
	return nil
}

func (c *compiler) loadApps(in []spec.App) error {
	c.apps = make([]*app, 0, len(in))
	seen := make(map[string]bool, len(in))
	total := 0
	for _, i := range byName(len(in), func(i int) string { return in[i].Name }) {
		a := &in[i]
		field := "apps[" + a.Name + "]"
		if err := checkName(a.Name); err != nil {
			return inputErr("apps["+itoa(i)+"].name", "%v", err)
		}
		if seen[a.Name] {
			return inputErr(field, "app %s is given twice", a.Name)
		}
		seen[a.Name] = true
		ap := &app{name: a.Name, spec: a}
		envNames := map[string]string{}
		for j := range a.Classes {
			cs := &a.Classes[j]
			cf := field + ".classes[" + cs.Name + "]"
			if err := checkName(cs.Name); err != nil {
				return inputErr(field+".classes["+itoa(j)+"].name", "%v", err)
			}
			if ap.class(cs.Name) != nil {
				return inputErr(cf, "class %s is given twice", cs.Name)
			}
			if cs.Tasks < 0 || cs.Tasks > MaxTasks {
				return inputErr(cf+".tasks", "%d is not between 0 and %d", cs.Tasks, MaxTasks)
			}
			if cs.Resources.CPU < 0 || cs.Resources.Memory < 0 {
				return inputErr(cf+".resources", "is negative")
			}
			env := spec.PeersEnvName(cs.Name)
			if other, dup := envNames[env]; dup {
				return inputErr(cf+".name", "gives the same variable %s as class %s", env, other)
			}
			envNames[env] = cs.Name
			cl := &class{pos: j, name: cs.Name, spec: cs, envName: env,
				cpu: int64(cs.Resources.CPU), mem: int64(cs.Resources.Memory)}
			for k := range cs.Placement.Labels {
				cl.labels = append(cl.labels, k)
			}
			slices.Sort(cl.labels)
			ap.classes = append(ap.classes, cl)
			ap.numTasks += cs.Tasks
			total += cs.Tasks
			if total > MaxTasks {
				return inputErr(cf+".tasks", "brings the total number of tasks over %d", MaxTasks)
			}
		}
		ap.byName = slices.Clone(ap.classes)
		slices.SortFunc(ap.byName, func(x, y *class) int { return strings.Compare(x.name, y.name) })
		if err := ap.loadRules(field); err != nil {
			return err
		}
		c.apps = append(c.apps, ap)
	}
	slices.SortFunc(c.apps, func(x, y *app) int { return strings.Compare(x.name, y.name) })

	// Tasks in placement order; plan order is computed per app. Each
	// app's tasks have their place in the list from the counts, so that
	// the two halves of the apps (by tasks) are filled side by side.
	c.tasks = c.scratch.taskSlice(total)[:total]
	ids := make([][]string, 0, len(c.apps)*4)
	for _, ap := range c.apps {
		for _, cl := range ap.classes {
			ids = append(ids, c.taskIDs(ap.name, cl.name, cl.spec.Tasks))
		}
	}
	fill := func(apps []*app, ti int32, ids [][]string) {
		for _, ap := range apps {
			for _, cl := range ap.classes {
				cl.tasks = make([]int32, cl.spec.Tasks)
				for k, id := range ids[0][:cl.spec.Tasks] {
					cl.tasks[k] = ti
					c.tasks[ti] = task{id: id, app: ap, class: cl, index: k, server: -1}
					ti++
				}
				ids = ids[1:]
			}
			ap.tasks = make([]int32, 0, ap.numTasks)
			for _, cl := range ap.byName {
				ap.tasks = append(ap.tasks, cl.tasks...)
			}
		}
	}
	mid, midTask, midClass := c.splitApps()
	sideBySide(total < minSideBySide,
		func() { fill(c.apps[:mid], 0, ids[:midClass]) },
		func() { fill(c.apps[mid:], int32(midTask), ids[midClass:]) })
	if err := c.resolveLinks(); err != nil {
		return err
	}
	var paths int64
	for _, l := range c.links {
		paths += int64(len(l.from.tasks)) * int64(len(l.to.tasks))
	}
	for _, ap := range c.apps {
		for _, r := range ap.rules {
			n := int64(len(r.from.tasks)) * int64(len(r.to.tasks))
			if r.from == r.to {
				n -= int64(len(r.from.tasks))
			}
			paths += n
			if paths > MaxPaths {
				return inputErr("apps["+ap.name+"].rules", "the rules give more than %d paths", MaxPaths)
			}
		}
	}
	return nil
}

// byName is 0..n-1 ordered by name(i), ties in input order.
func byName(n int, name func(int) string) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(x, y int) int { return strings.Compare(name(x), name(y)) })
	return idx
}

func (a *app) class(name string) *class {
	for _, c := range a.classes {
		if c.name == name {
			return c
		}
	}
	return nil
}

// loadRules resolves the app's rules and merges those of one (from, to,
// protocol) so that every pair of tasks gets one path per protocol.
func (a *app) loadRules(field string) error {
	type pairKey struct{ x, y int }
	encrypt := map[pairKey]int{} // unordered class pair -> index of the first rule
	merged := map[[2]int]map[string]int{}
	for i, r := range a.spec.Rules {
		rf := field + ".rules[" + itoa(i) + "]"
		from, to := a.class(r.From), a.class(r.To)
		if from == nil {
			return inputErr(rf+".from", "no class %q in app %s", r.From, a.name)
		}
		if to == nil && a.spec.ImportOf(r.To) != nil {
			a.cross = append(a.cross, i) // resolved across apps by resolveLinks
			continue
		}
		if to == nil {
			return inputErr(rf+".to", "no class %q in app %s", r.To, a.name)
		}
		proto := spec.Protocol(r.Protocol)
		if proto != spec.ProtoTCP && proto != spec.ProtoUDP {
			return inputErr(rf+".protocol", "%q is not tcp or udp", r.Protocol)
		}
		if len(r.Ports) == 0 {
			return inputErr(rf+".ports", "is empty: a rule allows at least one port")
		}
		for _, p := range r.Ports {
			if p < 1 || p > 65535 {
				return inputErr(rf+".ports", "%d is not a port", p)
			}
		}
		pk := pairKey{min(from.pos, to.pos), max(from.pos, to.pos)}
		if j, ok := encrypt[pk]; ok && a.spec.Rules[j].Encrypt != r.Encrypt {
			return inputErr(rf+".encrypt", "rules[%d] (%s->%s) and rules[%d] (%s->%s) disagree: the class pair %s/%s is encrypted or not as a whole",
				j, a.spec.Rules[j].From, a.spec.Rules[j].To, i, r.From, r.To, from.name, to.name)
		} else if !ok {
			encrypt[pk] = i
		}
		mk := [2]int{from.pos, to.pos}
		if merged[mk] == nil {
			merged[mk] = map[string]int{}
		}
		if j, ok := merged[mk][proto]; ok {
			a.rules[j].ports = append(a.rules[j].ports, r.Ports...)
			continue
		}
		merged[mk][proto] = len(a.rules)
		a.rules = append(a.rules, rule{from: from, to: to, protocol: proto,
			ports: slices.Clone(r.Ports), encrypt: r.Encrypt})
	}
	for i := range a.rules {
		slices.Sort(a.rules[i].ports)
		a.rules[i].ports = slices.Compact(a.rules[i].ports)
	}
	slices.SortFunc(a.rules, func(x, y rule) int {
		return cmp.Or(strings.Compare(x.from.name, y.from.name),
			strings.Compare(x.to.name, y.to.name),
			strings.Compare(x.protocol, y.protocol))
	})
	for i, r := range a.rules {
		r.from.out = append(r.from.out, i)
	}
	return nil
}

// loadCurrent attaches each earlier assignment to its task, and its
// server (if still one) for keep. Assignments of tasks that no longer
// exist are dropped.
func (c *compiler) loadCurrent(cur []Assignment) error {
	if len(cur) == 0 {
		return nil
	}
	// Finding the tasks and servers by name only reads the compiler: on
	// a large list (10,000 tasks: 0.58 ms of CPU for the tasks alone in a
	// profiled recompile) the two halves are found side by side, and
	// attached in order after.
	type found struct {
		ti, si int32 // the task (-1: none) and its server (-1: none)
	}
	res := make([]found, len(cur))
	find := func(lo, hi int) {
		var last idCursor
		for i := lo; i < hi; i++ {
			ti, ok := c.taskByID(cur[i].Task, &last)
			if !ok {
				res[i].ti = -1
				continue
			}
			res[i] = found{ti, -1}
			if s := c.byName[cur[i].Server]; s != nil {
				res[i].si = s.idx
			}
		}
	}
	n := len(cur)
	sideBySide(n < minSideBySide, func() { find(0, n/2) }, func() { find(n/2, n) })
	for i := range cur {
		if res[i].ti < 0 {
			continue
		}
		a := &cur[i]
		t := &c.tasks[res[i].ti]
		if t.cur != nil {
			// Report the same pair whatever the order of Current.
			x, y := t.cur, a
			if cmpAssignment(x, y) > 0 {
				x, y = y, x
			}
			return inputErr("current", "task %s is assigned twice (to %s and to %s)", a.Task, x.Server, y.Server)
		}
		t.cur = a
		if si := res[i].si; si >= 0 {
			t.curSrv = c.servers[si]
			t.curSrv.nCur++
		}
	}
	return nil
}

// minSideBySide is the length of a list below which it is not split in
// halves side by side: a goroutine costs more than a small list's work. A
// variable so that tests can split small inputs too.
var minSideBySide = 512

// sideBySide runs first and second side by side, first on a goroutine of
// its own, unless inTurn or there is one processor: then one after the
// other. Both must write only what the other does not read.
func sideBySide(inTurn bool, first, second func()) {
	if inTurn || runtime.GOMAXPROCS(0) < 2 {
		first()
		second()
		return
	}
	var wg sync.WaitGroup
	wg.Go(first)
	second()
	wg.Wait()
}

// splitApps splits the apps in two halves of about as many tasks: mid is
// the first app of the second half, tasks and classes are how many the
// first half has.
func (c *compiler) splitApps() (mid, tasks, classes int) {
	for mid < len(c.apps) && 2*(tasks+c.apps[mid].numTasks) <= len(c.tasks) {
		tasks += c.apps[mid].numTasks
		classes += len(c.apps[mid].classes)
		mid++
	}
	return mid, tasks, classes
}

// taskByID is the task whose ID is id. IDs are "app/class/index" and
// names hold no '/' (checkName), so the ID names the app, the class and
// the index; the task found must have that very ID ("07" is not index 7).
// Unlike a map from ID to task it needs nothing built first and
// allocates nothing. last is the class of the previous look-up: Current
// lists tasks in plan order, one class after the other.
func (c *compiler) taskByID(id string, last *idCursor) (int32, bool) {
	// Most look-ups are of the class of the one before: then only the
	// index is left to read.
	if cl := last.cl; cl != nil {
		if k, ok := indexAfter(id, last.app, cl.name); ok {
			if k < len(cl.tasks) && c.tasks[cl.tasks[k]].id == id {
				return cl.tasks[k], true
			}
			return 0, false
		}
	}
	an, rest, ok := strings.Cut(id, "/")
	if !ok {
		return 0, false
	}
	cn, idx, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, false
	}
	a := c.appByName(an)
	if a == nil {
		return 0, false
	}
	cl := a.class(cn)
	if cl == nil {
		return 0, false
	}
	*last = idCursor{app: a.name, cl: cl}
	k, err := strconv.Atoi(idx)
	if err != nil || k < 0 || k >= len(cl.tasks) {
		return 0, false
	}
	ti := cl.tasks[k]
	if c.tasks[ti].id != id {
		return 0, false
	}
	return ti, true
}

// indexAfter reads id as "<app>/<class>/<digits>" and gives the number;
// ok is false when id is not of that form or the number is too long for
// an index (the caller then compares the task's ID, so "07" is not 7).
func indexAfter(id, app, class string) (int, bool) {
	n := len(app) + len(class) + 2
	if len(id) <= n || len(id) > n+9 || id[len(app)] != '/' || id[n-1] != '/' ||
		id[:len(app)] != app || id[len(app)+1:n-1] != class {
		return 0, false
	}
	k := 0
	for _, d := range []byte(id[n:]) {
		if d < '0' || d > '9' {
			return 0, false
		}
		k = k*10 + int(d-'0')
	}
	return k, true
}

// idCursor is the app name and class of taskByID's last look-up.
type idCursor struct {
	app string
	cl  *class
}

func cmpAssignment(x, y *Assignment) int {
	return cmp.Or(strings.Compare(x.Server, y.Server), x.Address.Compare(y.Address))
}

// checkName rejects names that would make task IDs ambiguous.
func checkName(n string) error {
	switch {
	case n == "":
		return errorString("is empty")
	case strings.ContainsAny(n, "/ \t\n,="):
		return errorString("must not contain '/', ',', '=' or spaces")
	}
	return nil
}

type errorString string

func (e errorString) Error() string { return string(e) }

func itoa(i int) string { return strconv.Itoa(i) }
