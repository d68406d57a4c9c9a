package compile

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// benchFleet is 1,000 servers in three zones (a third with SSDs) and 50
// apps of 200 tasks each (10,000 tasks): half are web/api/cache/db, half
// front/worker/store, with a mix of encrypted and plain rules, self-rules
// included.
func benchFleet() Input { return sizedFleet(1000, 50, 1) }

// sizedFleet is benchFleet's shape with the given servers and apps, every
// class's task count divided by div (at least one task): the tests that
// run it under the race detector use a smaller one (race_test.go).
func sizedFleet(servers, apps, div int) Input {
	var in Input
	for i := range servers {
		s := spec.Server{
			Name:      fmt.Sprintf("srv%04d", i),
			Address:   fmt.Sprintf("198.18.%d.%d", i/250, 1+i%250),
			Capacity:  spec.Resources{CPU: 16000, Memory: 64 << 30},
			Labels:    map[string]string{"zone": string(rune('a' + i%3))},
			PublicKey: fmt.Sprintf("key%04d", i),
		}
		if i%3 == 0 {
			s.Labels["disk"] = "ssd"
		}
		in.Servers = append(in.Servers, s)
	}
	guest := spec.Guest{Runtime: spec.RuntimeNetns, Command: []string{"sleep", "infinity"}}
	class := func(name string, tasks int, cpu spec.MilliCPU, mem spec.Bytes) spec.Class {
		return spec.Class{Name: name, Tasks: max(1, tasks/div), Guest: guest, Resources: spec.Resources{CPU: cpu, Memory: mem}}
	}
	for i := range apps {
		a := spec.App{Name: fmt.Sprintf("app%02d", i)}
		if i%2 == 0 {
			db := class("db", 20, 1000, 4<<30)
			db.Placement = spec.Placement{Labels: map[string]string{"disk": "ssd"}, SpreadBy: "zone"}
			a.Classes = []spec.Class{class("web", 80, 250, 256<<20), class("api", 60, 500, 512<<20), class("cache", 40, 250, 1<<30), db}
			a.Rules = []spec.Rule{
				{From: "web", To: "api", Ports: []int{8080}},
				{From: "api", To: "cache", Ports: []int{6379}},
				{From: "api", To: "db", Ports: []int{5432}, Encrypt: true},
				{From: "db", To: "db", Ports: []int{5433}, Encrypt: true},
			}
		} else {
			store := class("store", 20, 1000, 2<<30)
			store.Placement.SpreadBy = "zone"
			a.Classes = []spec.Class{class("front", 100, 250, 256<<20), class("worker", 80, 500, 512<<20), store}
			a.Rules = []spec.Rule{
				{From: "front", To: "worker", Ports: []int{9000}, Encrypt: true},
				{From: "worker", To: "store", Ports: []int{5432}, Encrypt: true},
				{From: "worker", To: "worker", Ports: []int{7946}, Protocol: spec.ProtoUDP},
			}
		}
		in.Apps = append(in.Apps, a)
	}
	return in
}

func reportPlan(b *testing.B, p *Plan) {
	routes, peers := 0, 0
	for _, h := range p.Hosts {
		routes += numRoutes(&h)
		peers += len(h.Peers)
	}
	b.ReportMetric(float64(p.Tasks.Len()), "tasks")
	b.ReportMetric(float64(p.Paths.Len()), "paths")
	b.ReportMetric(float64(routes), "routes")
	b.ReportMetric(float64(peers), "peers")
}

// reportCPU adds the process's CPU time per operation (all threads, so the
// garbage collector's work is included).
func reportCPU(b *testing.B, since int64) {
	if d := cpuTime() - since; since > 0 && b.N > 0 {
		b.ReportMetric(float64(d)/float64(b.N), "cpu-ns/op")
	}
}

func BenchmarkCompile(b *testing.B) {
	in := benchFleet()
	var p *Plan
	cpu0 := cpuTime()
	for b.Loop() {
		var err error
		if p, err = Compile(in); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu0)
	reportPlan(b, p)
}

// BenchmarkCompileEncode is what the server does with a full compile of
// benchFleet: compile, then encode every host's desired state (the JSON
// written to etcd and sent to the agents) and every path (the placement
// records, one list per app), so that work the compiler no longer does
// but its consumers must is counted too.
//
// agents=1.3: the agents report no schema (they predate route groups, or
// have not reported yet) and get today's expanded routes; agents=1.5:
// they read route groups (the same in a tree that predates them);
// agents=1.6: they read derived states, peers and VXLAN entries without
// their lists (since round 9; a tree before it writes them route groups,
// as for 1.5).
func BenchmarkCompileEncode(b *testing.B) {
	for _, schema := range []string{"1.3", "1.5", "1.6"} {
		b.Run("agents="+schema, func(b *testing.B) { benchCompileEncode(b, schema) })
	}
}

func benchCompileEncode(b *testing.B, schema string) {
	in := benchFleet()
	var p *Plan
	var hostBytes, pathBytes int
	cpu0 := cpuTime()
	for b.Loop() {
		var err error
		if p, err = Compile(in); err != nil {
			b.Fatal(err)
		}
		hostBytes, pathBytes = 0, 0
		for i := range p.Hosts {
			js, err := encodeHost(&p.Hosts[i], schema)
			if err != nil {
				b.Fatal(err)
			}
			hostBytes += len(js)
		}
		js, err := json.Marshal(p.Paths)
		if err != nil {
			b.Fatal(err)
		}
		pathBytes = len(js)
	}
	reportCPU(b, cpu0)
	reportPlan(b, p)
	b.ReportMetric(float64(hostBytes), "host-bytes")
	b.ReportMetric(float64(pathBytes), "path-bytes")
}

// numRoutes is the number of routes of h, its route groups expanded
// where the tree has them (round 6 of issue 19).
func numRoutes(h *HostState) int {
	if n, ok := any(h).(interface{ NumRoutes() int }); ok {
		return n.NumRoutes()
	}
	return len(h.Routes)
}

// encodeHost encodes a host's state as the server of this tree does for
// an agent that reported it reads schema ("": none, an agent that
// predates route groups): for that agent (hoststate.State.EncodeFor,
// since round 6 of issue 19: route groups to an agent of 1.5, today's
// expanded routes to the others), with the state's own encoder where it
// has one (hoststate.State.Encode, since round 5), else json.Marshal.
// bench/compile/run.sh runs this file in a base tree too, which may
// predate both.
func encodeHost(h *HostState, schema string) ([]byte, error) {
	if e, ok := any(h).(interface {
		EncodeFor(string) ([]byte, error)
	}); ok {
		return e.EncodeFor(schema)
	}
	if e, ok := any(h).(interface{ Encode() ([]byte, error) }); ok {
		return e.Encode()
	}
	return json.Marshal(h)
}

// BenchmarkRecompileOneChange is the controller's usual case: the previous
// plan's placement as Current, one class scaled by one task.
func BenchmarkRecompileOneChange(b *testing.B) {
	in := benchFleet()
	p, err := Compile(in)
	if err != nil {
		b.Fatal(err)
	}
	in.Current, in.Networks = assignments(p)
	in.Apps[7].Classes[1].Tasks++
	cpu0 := cpuTime()
	for b.Loop() {
		if p, err = Compile(in); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu0)
	reportPlan(b, p)
}

// BenchmarkRecompileOneChangeCached is BenchmarkRecompileOneChange through
// a Cache that last compiled the previous input (the same fleet with the
// same Current, before the class was scaled). Each iteration starts from a
// copy of that warm cache, so every compile sees the same one change.
func BenchmarkRecompileOneChangeCached(b *testing.B) {
	in, warm, p := warmOneChange(b)
	var err error
	cpu0 := cpuTime()
	for b.Loop() {
		k := warm.clone()
		if p, err = k.Compile(in); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu0)
	reportPlan(b, p)
}

// BenchmarkRecompileOneChangeCachedEncode is what the controller does
// with BenchmarkRecompileOneChangeCached's change: the compile through
// the cache, then the encoding of every host state that needs it (all of
// them in a tree whose states have no Same method, before round 5 of issue
// 19; since, only those not the same as the last compile's).
func BenchmarkRecompileOneChangeCachedEncode(b *testing.B) {
	in, warm, p0 := warmOneChange(b)
	var p *Plan
	var err error
	encoded, hostBytes := 0, 0
	cpu0 := cpuTime()
	for b.Loop() {
		k := warm.clone()
		if p, err = k.Compile(in); err != nil {
			b.Fatal(err)
		}
		encoded, hostBytes = 0, 0
		for i := range p.Hosts {
			h := &p.Hosts[i]
			if s, ok := any(h).(interface{ Same(*HostState) bool }); ok && i < len(p0.Hosts) && s.Same(&p0.Hosts[i]) {
				continue
			}
			js, err := encodeHost(h, "")
			if err != nil {
				b.Fatal(err)
			}
			encoded++
			hostBytes += len(js)
		}
	}
	reportCPU(b, cpu0)
	reportPlan(b, p)
	b.ReportMetric(float64(encoded), "hosts-encoded")
	b.ReportMetric(float64(hostBytes), "host-bytes")
}

// warmOneChange is the one-class change of the cached recompile
// benchmarks: the sized fleet with its placement as Current, a Cache that
// compiled it (and that compile's plan), and the input with one class of
// app 7 scaled up by a task.
func warmOneChange(b *testing.B) (Input, *Cache, *Plan) {
	b.Helper()
	return oneChange(b, benchFleet(), 7)
}

// oneChange compiles in, makes its placement Current, compiles that
// through a new Cache (returned, with its plan) and returns the input
// with class 1 of app ai scaled up by a task.
func oneChange(tb testing.TB, in Input, ai int) (Input, *Cache, *Plan) {
	tb.Helper()
	p, err := Compile(in)
	if err != nil {
		tb.Fatal(err)
	}
	in.Current, in.Networks = assignments(p)
	warm := &Cache{}
	p0, err := warm.Compile(in)
	if err != nil {
		tb.Fatal(err)
	}
	in.Apps = slices.Clone(in.Apps)
	in.Apps[ai].Classes = slices.Clone(in.Apps[ai].Classes)
	in.Apps[ai].Classes[1].Tasks++
	return in, warm, p0
}

// clone is a copy of k that can go on separately. Entries are shared: a
// compile changes a reused entry only to point it at equal contents.
func (k *Cache) clone() *Cache {
	c := &Cache{cacheState: k.cacheState}
	c.servers, c.apps, c.hosts = slices.Clone(k.servers), maps.Clone(k.apps), slices.Clone(k.hosts)
	return c
}

// BenchmarkRecompileFanoutFleet is the control plane benchmark's fleet
// (internal/server BenchmarkLongPollFanout at 10,000 hosts): 10,000
// servers, one app of 10,000 tasks in 10 classes and no rules, recompiled
// without a cache after the command changed (every task kept, every
// host's state new), as the apply's dry run does.
func BenchmarkRecompileFanoutFleet(b *testing.B) {
	var in Input
	for i := range 10000 {
		in.Servers = append(in.Servers, spec.Server{Name: fmt.Sprintf("h%04d", i), Address: fmt.Sprintf("198.18.%d.%d", i/250, 1+i%250),
			Capacity: spec.Resources{CPU: 4000, Memory: 8 << 30}})
	}
	app := func(gen int) []spec.App {
		a := spec.App{Name: "fanout"}
		for c := range 10 {
			a.Classes = append(a.Classes, spec.Class{Name: fmt.Sprintf("c%d", c), Tasks: 1000, Resources: spec.Resources{CPU: 10, Memory: 4 << 20},
				Guest: spec.Guest{Runtime: spec.RuntimeNetns, Command: []string{"sleep", fmt.Sprint("gen-", gen)}}})
		}
		return []spec.App{a}
	}
	in.Apps = app(0)
	p, err := Compile(in)
	if err != nil {
		b.Fatal(err)
	}
	in.Current, in.Networks = assignments(p)
	in.Apps = app(1)
	cpu0 := cpuTime()
	for b.Loop() {
		if p, err = Compile(in); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu0)
	reportPlan(b, p)
}

// BenchmarkPlanOutputFloor is what BenchmarkCompile cannot go below in
// this process, whatever the compiler does: each iteration copies the
// slices of a compiled plan of benchFleet (every path, task, guest, peer
// with its allowed IPs, VXLAN entry with its guests, route and firewall
// rule) into fresh memory, nothing else, while the previous copy is kept
// alive as a caller keeps the previous plan. The difference between the
// two is the compiler's own work.
func BenchmarkPlanOutputFloor(b *testing.B) {
	p, err := Compile(benchFleet())
	if err != nil {
		b.Fatal(err)
	}
	var keep *Plan
	cpu0 := cpuTime()
	for b.Loop() {
		keep = copyPlanSlices(p)
	}
	reportCPU(b, cpu0)
	reportPlan(b, keep)
}

// copyPlanSlices copies p's slices, down to the lists each element holds
// that the compiler makes per host (allowed IPs, VXLAN guests).
func copyPlanSlices(p *Plan) *Plan {
	q := &Plan{Networks: slices.Clone(p.Networks), Tasks: NewTaskList(p.Tasks.Flat()), Hosts: make([]HostState, len(p.Hosts))}
	// The paths are not copied: since round 4 (issue 19) a plan holds what
	// they are derived from, not the paths (BenchmarkPathsAll derives them).
	for i, h := range p.Hosts {
		h.Guests = slices.Clone(h.Guests)
		h.Peers = slices.Clone(h.Peers)
		for j := range h.Peers {
			h.Peers[j].AllowedIPs = slices.Clone(h.Peers[j].AllowedIPs)
		}
		h.VXLAN = slices.Clone(h.VXLAN)
		for j := range h.VXLAN {
			h.VXLAN[j].Guests = slices.Clone(h.VXLAN[j].Guests)
		}
		h.Routes = slices.Clone(h.Routes)
		h.Firewall = slices.Clone(h.Firewall)
		q.Hosts[i] = h
	}
	return q
}
