package verify

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// big is the app of issue 19: 60 + 60 tasks over three servers, one
// encrypted rule, and one task of another app.
func big() ([]spec.App, []compile.Task) {
	cls := func(name string, n, port int) spec.Class {
		return spec.Class{Name: name, Tasks: n, Ports: []spec.Port{{Port: port, Protocol: "tcp"}}}
	}
	apps := []spec.App{{
		Name:    "big",
		Classes: []spec.Class{cls("front", 60, 80), cls("back", 60, 5432)},
		Rules:   []spec.Rule{{From: "front", To: "back", Ports: []int{5432}, Encrypt: true}},
	}, {
		Name:    "blog",
		Classes: []spec.Class{cls("www", 1, 80)},
	}}
	var tasks []compile.Task
	n := 0
	for _, c := range []string{"front", "back"} {
		for i := range 60 {
			n++
			tasks = append(tasks, compile.Task{
				ID: fmt.Sprintf("big/%s/%d", c, i), App: "big", Class: c,
				Server:  fmt.Sprintf("s%d", i%3+1),
				Address: netip.AddrFrom4([4]byte{100, 64, byte(n / 256), byte(n % 256)}),
			})
		}
	}
	tasks = append(tasks, compile.Task{ID: "blog/www/0", App: "blog", Class: "www", Server: "s2", Address: netip.MustParseAddr("100.64.9.1")})
	return apps, tasks
}

type comboKey struct {
	fromApp, fromClass, toClass, toAddr, proto string
	port                                       int
	fromServer, toServer, expect               string
}

func combos(cs []Check) map[comboKey]int {
	out := map[comboKey]int{}
	for _, c := range cs {
		out[comboKey{c.FromApp, c.FromClass, c.ToClass, c.ToAddr, c.Protocol, c.Port, c.FromServer, c.ToServer, c.Expect}]++
	}
	return out
}

// A sampled plan covers every combination an exhaustive plan has, with
// the same expectation, with at most Sample checks each, and says so.
func TestSampledPlanCoversEveryCombination(t *testing.T) {
	apps, tasks := big()
	all, full, err := Plan("big", apps, tasks, Options{Exhaustive: true, MaxChecks: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// 120*119 pairs: front->front 80, front->back 5432 and 9, back->front
	// 80, back->back 5432; and the other app both ways.
	if want := 120*119 + 60*60 + 120 + 120; len(all) != want || full.Pairs != want || full.Checks != want {
		t.Fatalf("exhaustive plan: %d checks, coverage %+v, want %d", len(all), full, want)
	}
	sampled, cov, err := Plan("big", apps, tasks, Options{Sample: 3, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	want, got := combos(all), combos(sampled)
	if len(got) != len(want) || cov.Combinations != len(want) || full.Combinations != len(want) {
		t.Fatalf("sampled plan covers %d combinations (coverage says %d), the exhaustive one %d", len(got), cov.Combinations, len(want))
	}
	for k, n := range want {
		if got[k] == 0 || got[k] > 3 || got[k] > n {
			t.Errorf("combination %+v: %d of %d checks", k, got[k], n)
		}
	}
	// 5 class/port combinations on 3x3 host pairs, 3 blog->big per host,
	// 2 big->blog per host (front and back).
	if cov.Combinations != 5*9+2*3+2*3 || cov.Checks != len(sampled) || cov.Pairs != len(all) || len(sampled) > 3*cov.Combinations {
		t.Fatalf("coverage %+v for %d checks", cov, len(sampled))
	}
	line := cov.String()
	for _, w := range []string{fmt.Sprintf("covered all %d class", cov.Combinations), fmt.Sprintf("%d of %d task-pair checks", len(sampled), len(all)), "up to 3 pairs each, seed 7"} {
		if !strings.Contains(line, w) {
			t.Errorf("coverage line %q lacks %q", line, w)
		}
	}
	// No check from a task to itself, each sampled check is one of the
	// exhaustive plan's, and no check twice.
	type id struct {
		from, to, addr, proto string
		port                  int
	}
	in := map[id]bool{}
	for _, c := range all {
		in[id{c.FromTask, c.ToTask, c.ToAddr, c.Protocol, c.Port}] = true
	}
	seen := map[id]bool{}
	for _, c := range sampled {
		k := id{c.FromTask, c.ToTask, c.ToAddr, c.Protocol, c.Port}
		if c.FromTask == c.ToTask || !in[k] || seen[k] {
			t.Errorf("sampled check %+v: self %v, in the exhaustive plan %v, twice %v", c, c.FromTask == c.ToTask, in[k], seen[k])
		}
		seen[k] = true
	}
}

// The sample is a function of the seed: the same seed draws the same
// pairs, another seed other pairs.
func TestSampleFollowsSeed(t *testing.T) {
	apps, tasks := big()
	ids := func(seed int64) []string {
		cs, _, err := Plan("big", apps, tasks, Options{Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range cs {
			out = append(out, fmt.Sprintf("%s>%s:%d", c.FromTask, c.ToTask, c.Port))
		}
		return out
	}
	a, b, c := ids(1), ids(1), ids(2)
	if !slices.Equal(a, b) {
		t.Fatal("the same seed drew different pairs")
	}
	if slices.Equal(a, c) {
		t.Fatal("two seeds drew the same pairs")
	}
}

// An app whose combinations are no larger than the sample is checked in
// full: the sampled plan is the exhaustive one, in the same order.
func TestSmallAppPlanIsExhaustive(t *testing.T) {
	apps, tasks := shop()
	all, full, err := Plan("shop", apps, tasks, Options{Exhaustive: true})
	if err != nil {
		t.Fatal(err)
	}
	cs, cov, err := Plan("shop", apps, tasks, Options{Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(all, cs) || cov.Pairs != full.Pairs || cov.Checks != len(all) {
		t.Fatalf("sampled plan of a small app: %d checks, exhaustive %d (%+v)", len(cs), len(all), cov)
	}
	if !strings.Contains(cov.String(), "every pair") {
		t.Fatalf("coverage line %q", cov.String())
	}
}

// hostLeak answers like fakeNet, but leaks the marker of encrypted
// traffic from one host to another only: a fault a sample that skipped a
// host pair would miss.
type hostLeak struct {
	*fakeNet
	from, to string
}

func (h hostLeak) Probe(ctx context.Context, server string, req api.ProbeRequest) (api.ProbeResult, error) {
	res, err := h.fakeNet.Probe(ctx, server, req)
	if dst := h.tasks[req.ToAddr]; server == h.from && dst.Server == h.to && res.WireGuardFrames > 0 {
		res.MarkerSeen = true
	}
	return res, err
}

// A sampled run finds a leak confined to one pair of hosts, whatever the
// seed, since every host pair of every class pair and port is covered;
// and it reports the seed it drew.
func TestSampledRunFindsHostPairLeak(t *testing.T) {
	apps, tasks := big()
	for seed := int64(1); seed <= 5; seed++ {
		p := hostLeak{fakeNet: newFakeNet(apps, tasks), from: "s3", to: "s1"}
		rep, err := Run(context.Background(), p, "big", apps, tasks, Options{Timeout: time.Second, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		leaks := 0
		for _, c := range rep.Checks {
			if !c.OK {
				if c.FromServer != "s3" || c.ToServer != "s1" || c.Expect != Encrypted || c.Observed != Plain {
					t.Errorf("unexpected mismatch %+v", c)
				}
				leaks++
			}
		}
		if leaks == 0 || rep.Coverage.Seed != seed || p.calls > 3*rep.Coverage.Combinations {
			t.Fatalf("seed %d: %d leaks found, coverage %+v, %d probes", seed, leaks, rep.Coverage, p.calls)
		}
	}
	// Without a seed, Run draws one and reports it.
	rep, err := Run(context.Background(), newFakeNet(apps, tasks), "big", apps, tasks, Options{Timeout: time.Second})
	if err != nil || !rep.OK() || rep.Coverage.Seed == 0 {
		t.Fatalf("run without a seed: %v, ok %v, coverage %+v", err, rep.OK(), rep.Coverage)
	}
}

// Exhaustive runs still refuse above the limit, naming the flag.
func TestExhaustiveRespectsLimit(t *testing.T) {
	apps, tasks := big()
	if _, _, err := Plan("big", apps, tasks, Options{Exhaustive: true}); err == nil || !strings.Contains(err.Error(), "--max-checks") {
		t.Fatalf("exhaustive plan of %d tasks under the default limit: %v", len(tasks), err)
	}
	if _, _, err := Plan("big", apps, tasks, Options{}); err != nil {
		t.Fatalf("sampled plan: %v", err)
	}
}

// Checks from a published port's outside clients count in the report's
// coverage line, so that it adds up with the checks the report lists.
func TestCoverageCountsOutsideChecks(t *testing.T) {
	rep := &Report{Coverage: Coverage{Combinations: 2, Checks: 2, Pairs: 2, Sample: 3}}
	rep.AddChecks([]Check{{OK: true}, {OK: false}, {Observed: Incomplete}})
	if rep.Coverage.Outside != 3 || rep.Passed != 1 || rep.Failed != 1 || rep.Incomplete != 1 {
		t.Fatalf("coverage %+v, passed %d failed %d incomplete %d", rep.Coverage, rep.Passed, rep.Failed, rep.Incomplete)
	}
	if got, want := rep.Coverage.String(), "covered all 2 class/port/host combinations with 2 of 2 task-pair checks (every pair: none has more than 3), and 3 checks from outside clients of published ports"; got != want {
		t.Fatalf("coverage line\n%s\nwant\n%s", got, want)
	}
}
