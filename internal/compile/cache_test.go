package compile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// mutate makes one random change of the kind a controller sees between
// two compiles, copying what it changes so that earlier inputs stay as
// they were.
func mutate(r *rand.Rand, in Input) (Input, string) {
	in.Apps = slices.Clone(in.Apps)
	in.Servers = slices.Clone(in.Servers)
	switch op := r.Intn(9); {
	case op == 8 && len(in.Apps) > 0: // an export withdrawn or given again
		ai := r.Intn(len(in.Apps))
		a := &in.Apps[ai]
		if len(a.Exports) > 0 {
			a.Exports = nil
			return in, "exports of " + a.Name + " withdrawn"
		}
		a.Exports = []spec.Export{{Name: "svc", Class: a.Classes[0].Name, Ports: []int{80, 7000}, Protocol: spec.ProtoTCP}}
		return in, "export of " + a.Name
	case op == 0 && len(in.Apps) > 0: // scale a class
		ai := r.Intn(len(in.Apps))
		a := &in.Apps[ai]
		a.Classes = slices.Clone(a.Classes)
		ci := r.Intn(len(a.Classes))
		a.Classes[ci].Tasks = max(0, a.Classes[ci].Tasks+r.Intn(5)-2)
		return in, "scale " + a.Name + "/" + a.Classes[ci].Name
	case op == 1 && len(in.Apps) > 1: // remove an app
		ai := r.Intn(len(in.Apps))
		name := in.Apps[ai].Name
		in.Apps = slices.Delete(in.Apps, ai, ai+1)
		return in, "remove " + name
	case op == 2: // add an app
		extra := randInput(r).Apps[0]
		extra.Name = fmt.Sprintf("new%d", r.Intn(1000))
		extra.Network = ""
		for _, a := range in.Apps {
			if a.Name == extra.Name {
				return in, "nothing"
			}
		}
		in.Apps = append(in.Apps, extra)
		return in, "add " + extra.Name
	case op == 3: // server down or up
		si := r.Intn(len(in.Servers))
		s := &in.Servers[si]
		if s.State == spec.ServerDown {
			s.State = spec.ServerReady
		} else {
			s.State = spec.ServerDown
		}
		return in, "server " + s.Name + " " + s.State
	case op == 4: // server key or port change
		si := r.Intn(len(in.Servers))
		s := &in.Servers[si]
		switch r.Intn(3) {
		case 0:
			s.PublicKey = fmt.Sprintf("key-%d", r.Intn(1000))
		case 1:
			s.WireGuardPort = 51820 + r.Intn(3)
		default:
			s.KeyGeneration++ // a rotation asked
		}
		return in, "server " + s.Name + " key/port/generation"
	case op == 5 && len(in.Apps) > 0: // rule change
		ai := r.Intn(len(in.Apps))
		a := &in.Apps[ai]
		a.Rules = slices.Clone(a.Rules)
		if len(a.Rules) > 0 && r.Intn(2) == 0 {
			ri := r.Intn(len(a.Rules))
			a.Rules[ri].Ports = []int{80 + r.Intn(3)}
		} else {
			c := a.Classes[r.Intn(len(a.Classes))].Name
			a.Rules = append(a.Rules, spec.Rule{From: c, To: c, Ports: []int{9000}, Protocol: spec.ProtoUDP})
		}
		return in, "rules of " + a.Name
	case op == 6 && len(in.Apps) > 0: // guest spec change
		ai := r.Intn(len(in.Apps))
		a := &in.Apps[ai]
		a.Classes = slices.Clone(a.Classes)
		ci := r.Intn(len(a.Classes))
		a.Classes[ci].Guest.Env = map[string]string{"V": fmt.Sprint(r.Intn(3))}
		return in, "env of " + a.Name
	case op == 7: // a server joins or leaves
		if len(in.Servers) > 1 && r.Intn(2) == 0 {
			si := r.Intn(len(in.Servers))
			name := in.Servers[si].Name
			in.Servers = slices.Delete(in.Servers, si, si+1)
			return in, "server " + name + " leaves"
		}
		n := fmt.Sprintf("x%d", r.Intn(1000))
		for _, s := range in.Servers {
			if s.Name == n {
				return in, "nothing"
			}
		}
		in.Servers = append(in.Servers, spec.Server{Name: n, Address: fmt.Sprintf("198.19.%d.%d", r.Intn(4), 1+r.Intn(250)),
			Capacity: spec.Resources{CPU: 4000, Memory: 8 << 30}, PublicKey: "key-" + n})
		return in, "server " + n + " joins"
	}
	return in, "nothing"
}

// TestCacheSameAsCompile runs random sequences of changes through one
// Cache, feeding each plan back as the next Current, and checks that every
// plan is byte for byte the one a fresh Compile gives.
func TestCacheSameAsCompile(t *testing.T) {
	sequences := 150
	if testing.Short() {
		sequences = 40
	}
	cacheSameAsCompile(t, 3, sequences, 12)
}

// TestCacheSameAsCompileInHalves is TestCacheSameAsCompile with every list
// of two or more split in halves side by side (sideBySide), as only large
// fleets are otherwise, and the sequences run with two processors.
func TestCacheSameAsCompileInHalves(t *testing.T) {
	defer func(n int) { minSideBySide = n }(minSideBySide)
	minSideBySide = 2
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	cacheSameAsCompile(t, 4, 40, 12)
}

func cacheSameAsCompile(t *testing.T, seed int64, sequences, steps int) {
	r := rand.New(rand.NewSource(seed))
	var compared, failed int
	for sq := range sequences {
		var k Cache
		in := randInput(r)
		in.Servers = append(in.Servers, fleet(2+r.Intn(4))...) // room for scaling
		var history []string
		for st := range steps {
			want, werr := Compile(in)
			got, gerr := k.Compile(shuffled(r, in))
			if (werr == nil) != (gerr == nil) || (werr != nil && werr.Error() != gerr.Error()) {
				t.Fatalf("sequence %d step %d (%v): errors differ: %v / %v", sq, st, history, werr, gerr)
			}
			if werr == nil {
				if w, g := mustJSON(t, want), mustJSON(t, got); !bytes.Equal(w, g) {
					t.Fatalf("sequence %d step %d (%v): cached plan differs from Compile: %s", sq, st, history, firstDiff(g, w))
				}
				compared++
				in.Current, in.Networks = assignments(got)
			} else {
				var pe *PlacementError
				if !errors.As(werr, &pe) {
					var ie *InputError
					if !errors.As(werr, &ie) {
						t.Fatalf("untyped error %v", werr)
					}
				}
				failed++
			}
			var what string
			in, what = mutate(r, in)
			history = append(history, what)
		}
	}
	t.Logf("%d plans compared, %d compiles failed alike", compared, failed)
	if compared < sequences*steps/2 {
		t.Errorf("only %d of %d compiles succeeded: the changes make inputs too often invalid", compared, sequences*steps)
	}
}

// TestCacheFleet checks the cache on part of the benchmark fleet (600
// servers, 8 apps; under the race detector 150 servers and 8 apps of a
// fifth of the tasks): one class scaled up, then a server going down, give
// Compile's bytes, and after the first change the hosts it did not touch
// are reused (after the second, every app has a task that moved).
func TestCacheFleet(t *testing.T) {
	in := sizedFleet(600, 8, 1)
	if raceDetector {
		in = sizedFleet(150, 8, 5)
	}
	var k Cache
	p, err := k.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	in.Current, in.Networks = assignments(p)
	in.Apps[7].Classes = slices.Clone(in.Apps[7].Classes)
	in.Apps[7].Classes[1].Tasks++
	for step := range 2 {
		got, err := k.Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(want)
		if !bytes.Equal(gb, wb) {
			t.Fatalf("step %d: cached plan differs: %s", step, firstDiff(gb, wb))
		}
		reused := 0
		for i := range got.Hosts {
			if g, q := got.Hosts[i].RouteGroups, p.Hosts[i].RouteGroups; len(g) > 0 && len(q) > 0 && &g[0] == &q[0] {
				reused++
			}
		}
		if step == 0 && reused < len(got.Hosts)/4 {
			t.Errorf("step %d: only %d of %d hosts reused", step, reused, len(got.Hosts))
		}
		p = got
		in.Current, in.Networks = assignments(got)
		in.Servers = slices.Clone(in.Servers)
		in.Servers[17].State = spec.ServerDown
	}
}

// TestCacheKeepsPlans checks that a compile through the cache leaves the
// plans it returned before as they were.
func TestCacheKeepsPlans(t *testing.T) {
	r := rand.New(rand.NewSource(5))
	for range 60 {
		in := randInput(r)
		in.Servers = append(in.Servers, fleet(4)...)
		var k Cache
		p, err := k.Compile(in)
		if err != nil {
			continue
		}
		before := mustJSON(t, p)
		in.Current, in.Networks = assignments(p)
		for range 4 {
			in, _ = mutate(r, in)
			if q, err := k.Compile(in); err == nil {
				in.Current, in.Networks = assignments(q)
			}
		}
		if !bytes.Equal(mustJSON(t, p), before) {
			t.Fatal("a later compile through the cache changed an earlier plan")
		}
	}
}

// TestKeyGenerationReachesItsHostOnly: a rotation asked of one server
// changes that host's state (so that its agent gets a new revision) and
// no other host's, also through a warm cache.
func TestKeyGenerationReachesItsHostOnly(t *testing.T) {
	in := Input{Servers: fleet(3), Apps: oneTask(nil)}
	var k Cache
	before, err := k.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	in.Servers = slices.Clone(in.Servers)
	// A rotation to generation 2 started by the control plane (phase
	// prepare): the generation reaches that host's state only.
	in.Servers[1].KeyGeneration = 2
	in.Servers[1].Rotation = &spec.KeyRotation{Generation: 2, Phase: spec.RotationPrepare}
	in.Current, in.Networks = assignments(before)
	after, err := k.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range after.Hosts {
		want := int64(0)
		if h.Host == in.Servers[1].Name {
			want = 2
		}
		if h.KeyGeneration != want {
			t.Errorf("host %s: key generation %d, want %d", h.Host, h.KeyGeneration, want)
		}
		hj, _ := json.Marshal(h)
		bj, _ := json.Marshal(before.Hosts[i])
		if changed := !bytes.Equal(hj, bj); changed != (want != 0) {
			t.Errorf("host %s: state changed %v, want %v", h.Host, changed, want != 0)
		}
	}
}

// TestParallelHostsSameAsSequential: host states built by several builders
// side by side (one range of servers each) are byte for byte those of one
// builder, with and without a cache. Under the race detector (where it
// matters most: the builders share the compiler's data) the fleet is the
// smallest that still gets hostWorkers builders, with a fifth of the tasks.
func TestParallelHostsSameAsSequential(t *testing.T) {
	// Server counts that are no multiple of hostChunk: the last chunk
	// builders take is a short one.
	in := sizedFleet(400+hostChunk/2, 6, 1)
	if raceDetector {
		in = sizedFleet(hostWorkers*minHostsPerWorker+hostChunk/2, 6, 5)
	}
	if w := len(in.Servers) / minHostsPerWorker; w < hostWorkers {
		t.Fatalf("%d servers make %d builders, not %d: the test would compare one builder with itself", len(in.Servers), w, hostWorkers)
	}
	if len(in.Servers)%hostChunk == 0 {
		t.Fatalf("%d servers are whole chunks of %d", len(in.Servers), hostChunk)
	}
	compileWith := func(procs int, cached bool) []byte {
		old := runtime.GOMAXPROCS(procs)
		defer runtime.GOMAXPROCS(old)
		var p *Plan
		var err error
		if cached {
			var k Cache
			if _, err = k.Compile(in); err == nil {
				in2 := in
				in2.Apps = slices.Clone(in.Apps)
				in2.Apps[3].Classes = slices.Clone(in2.Apps[3].Classes)
				in2.Apps[3].Classes[0].Tasks++
				p, err = k.Compile(in2)
			}
		} else {
			p, err = Compile(in)
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(p)
		return b
	}
	for _, cached := range []bool{false, true} {
		one, four := compileWith(1, cached), compileWith(4, cached)
		if !bytes.Equal(one, four) {
			t.Fatalf("cached %v: plans differ between one and four builders: %s", cached, firstDiff(one, four))
		}
	}
}

// TestRebuiltHostKeepsUnchangedPeers: a host rebuilt after a change keeps
// (shares) the peers and VXLAN entries of its cached state that did not
// change, and only those: after one class is scaled some rebuilt host
// shares its previous Peers or VXLAN slice, and after a server's key,
// WireGuard port or address changes, every plan is still byte for byte
// Compile's.
func TestRebuiltHostKeepsUnchangedPeers(t *testing.T) {
	in := sizedFleet(100, 6, 5)
	if raceDetector {
		in = sizedFleet(40, 4, 10)
	}
	var k Cache
	p, err := k.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	in.Current, in.Networks = assignments(p)
	same := func(x, y []Peer) bool { return len(x) > 0 && len(y) > 0 && &x[0] == &y[0] }
	sameVX := func(x, y []VXLANEntry) bool { return len(x) > 0 && len(y) > 0 && &x[0] == &y[0] }
	steps := []struct {
		what   string
		change func(in *Input)
	}{
		{"scale app01/worker", func(in *Input) {
			in.Apps[1].Classes = slices.Clone(in.Apps[1].Classes)
			in.Apps[1].Classes[1].Tasks++
		}},
		{"key of srv0007", func(in *Input) { in.Servers[7].PublicKey = "key-new" }},
		{"port of srv0011", func(in *Input) { in.Servers[11].WireGuardPort = 51999 }},
		{"address of srv0013", func(in *Input) { in.Servers[13].Address = "198.19.0.13" }},
		{"scale app02/api", func(in *Input) {
			in.Apps[2].Classes = slices.Clone(in.Apps[2].Classes)
			in.Apps[2].Classes[1].Tasks--
		}},
	}
	for _, st := range steps {
		in.Apps = slices.Clone(in.Apps)
		in.Servers = slices.Clone(in.Servers)
		st.change(&in)
		got, err := k.Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		if g, w := mustJSON(t, got), mustJSON(t, want); !bytes.Equal(g, w) {
			t.Fatalf("%s: cached plan differs from Compile: %s", st.what, firstDiff(g, w))
		}
		kept := 0
		for i := range got.Hosts {
			g, q := &got.Hosts[i], &p.Hosts[i]
			rebuilt := len(g.RouteGroups) > 0 && len(q.RouteGroups) > 0 && &g.RouteGroups[0] != &q.RouteGroups[0]
			if rebuilt && (same(g.Peers, q.Peers) || sameVX(g.VXLAN, q.VXLAN)) {
				kept++
			}
		}
		if strings.HasPrefix(st.what, "scale") && kept == 0 {
			t.Errorf("%s: no rebuilt host kept its previous peers or VXLAN entries", st.what)
		}
		p = got
		in.Current, in.Networks = assignments(got)
	}
}
