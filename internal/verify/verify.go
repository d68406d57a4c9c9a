// Package verify proves an app's policy with real traffic: for every ordered
// pair of its tasks and every port a rule names (and one it does not), it
// asks the source task's host to connect from inside the guest and send a
// random marker, while capturing on that host's underlay interface. Allowed
// pairs must connect, all others must not; an encrypted pair must never show
// the marker on the underlay and must show WireGuard frames between the two
// hosts during the probe, and a plain pair must show the marker (the control
// that proves the capture works). A probe that could not run, or whose
// capture cannot vouch for what it did not see, is incomplete: never a pass.
//
// Expectations come from the app specs' rules directly, not from the
// compiler's paths, so that verify also checks the compiler.
package verify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Verdicts, expected and observed.
const (
	Encrypted = "encrypted" // crossed the underlay as WireGuard frames to the peer host, marker never seen in plain
	Plain     = "plain"     // the marker was seen in plain on the underlay
	Local     = "local"     // connected without leaving the host
	Denied    = "denied"    // did not connect (dropped)
	Open      = "open"      // reached the peer, nothing listens: reachability proven, encryption not
	// Incomplete: the probe could not run, or ran but the capture cannot
	// prove what it did not see (no WireGuard frames, frames lost): the
	// check proves nothing either way. Never a pass; run once more, then
	// reported apart (a VM whose image has no probe responder, a probe
	// port that did not answer in time, an agent that could not be asked).
	Incomplete = "incomplete"
)

// Prober runs one probe on the host of the source task.
type Prober interface {
	Probe(ctx context.Context, server string, req api.ProbeRequest) (api.ProbeResult, error)
}

// Options tune a run.
type Options struct {
	// Timeout of one connection attempt: a dropped packet shows as a
	// timeout, so this bounds how long each denied check takes.
	Timeout time.Duration
	// Parallel probes at once (0: 8), of checks expected to connect;
	// DeniedParallel (0: 4 times Parallel) of checks expected to be
	// denied, beside them. A denied check mostly waits out Timeout (a
	// dropped SYN answers nothing): 8 at a time, the 108 denied checks of
	// a 100-task app took 20 of verify's 21 s.
	Parallel       int
	DeniedParallel int
	// MaxChecks bounds the run on large apps (0: 5000).
	MaxChecks int
	// Sample is how many task pairs of each combination (see Plan) are
	// probed (0: DefaultSample); Exhaustive probes every pair instead.
	Sample     int
	Exhaustive bool
	// Seed draws the sample; Run picks one when it is 0 and reports it
	// (Report.Coverage), so that a run can be repeated with --seed.
	Seed int64
	// NoRetry reports the first probe of every check as it is, without
	// running shortfalls again (see Run): for tests that must see a path
	// broken before the agent repairs it.
	NoRetry bool
	// RetryFor is how long after the first pass shortfalls keep being
	// run again, with growing pauses (0: DefaultRetryFor). The first
	// retry comes at once, whatever RetryFor.
	RetryFor time.Duration
}

// DefaultRetryFor is Options.RetryFor's default: long enough for a
// program of a small CPU request to open its port after its task shows
// running (a `cpu: 1m` sample took about 2 s), short enough that a port
// nothing will ever listen on fails the run soon.
const DefaultRetryFor = 10 * time.Second

// Check is one probe: what the policy says and what the wire showed.
type Check struct {
	App        string `json:"app"`
	FromApp    string `json:"fromApp"` // differs from App for isolation checks
	FromClass  string `json:"fromClass"`
	ToClass    string `json:"toClass"`
	FromTask   string `json:"fromTask"`
	ToTask     string `json:"toTask"`
	FromServer string `json:"fromServer"`
	ToServer   string `json:"toServer"`
	// ToAddr is the destination of a check to outside Corridor (ToClass
	// OutsideClass, no ToTask): an egress destination or a resolver.
	ToAddr   string `json:"toAddr,omitempty"`
	Protocol string `json:"protocol"`
	Port     int    `json:"port"`
	Expect   string `json:"expect"`
	Observed string `json:"observed"`
	Detail   string `json:"detail,omitempty"`
	OK       bool   `json:"ok"`
	// Retried: the first probe fell short of an allowed expectation and
	// was run once more (see Run).
	Retried bool `json:"retried,omitempty"`
	// Time is when the (last) probe of the check started; MarkerSeen and
	// WireGuardFrames are what the capture on the source host's underlay
	// counted during it (the evidence report shows them).
	Time            time.Time `json:"time,omitzero"`
	MarkerSeen      bool      `json:"markerSeen,omitempty"`
	WireGuardFrames uint64    `json:"wireGuardFrames,omitempty"`
}

// Report is the result of a run.
type Report struct {
	App    string  `json:"app"`
	Checks []Check `json:"checks"`
	Passed int     `json:"passed"`
	Failed int     `json:"failed"`
	// Incomplete checks proved nothing; they are neither passed nor
	// failed.
	Incomplete int `json:"incomplete"`
	// Coverage says which combinations the checks cover and how they
	// were sampled.
	Coverage Coverage `json:"coverage"`
	// Started and Finished bound the run.
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
}

// OK reports whether every check ran and matched.
func (r *Report) OK() bool { return r.Failed == 0 && r.Incomplete == 0 && r.Passed > 0 }

// NoMismatch reports whether no check contradicted the policy, counting
// incomplete checks as unknown (`verify --allow-incomplete`).
func (r *Report) NoMismatch() bool { return r.Failed == 0 && r.Passed > 0 }

// Plan lists the checks that prove app's policy, given every app and task
// of the fleet (other apps are used for isolation checks), and says what
// they cover. It does no I/O.
//
// What a check proves (connects or not, encrypted or not on the wire)
// depends on the source and destination classes, the port and the two
// hosts, not on which task of a class on a host it starts from. So the
// checks are grouped into combinations of (source app and class,
// destination class or outside address, protocol, port, source host,
// destination host); every combination is covered, by opt.Sample task
// pairs drawn from it with a seeded generator (by every pair with
// opt.Exhaustive). The number of checks then grows with classes, ports
// and hosts, not with the square of the tasks.
func Plan(app string, apps []spec.App, tasks []compile.Task, opt Options) ([]Check, Coverage, error) {
	maxChecks := opt.MaxChecks
	if maxChecks <= 0 {
		maxChecks = 5000
	}
	cov := Coverage{Exhaustive: opt.Exhaustive, Seed: opt.Seed}
	if !opt.Exhaustive {
		cov.Sample = opt.Sample
		if cov.Sample <= 0 {
			cov.Sample = DefaultSample
		}
	}
	rng := mrand.New(mrand.NewPCG(uint64(opt.Seed), 0x636f72726964)) // "corrid"
	var target *spec.App
	for i := range apps {
		if apps[i].Name == app {
			target = &apps[i]
		}
	}
	if target == nil {
		return nil, cov, fmt.Errorf("verify: app %q not found", app)
	}
	byApp := map[string][]compile.Task{}
	for _, t := range tasks {
		byApp[t.App] = append(byApp[t.App], t)
	}
	own := byApp[app]
	if len(own) == 0 {
		return nil, cov, fmt.Errorf("verify: app %q has no placed tasks", app)
	}
	for _, ts := range byApp {
		sortTasks(ts)
	}
	links := across(crossLinks(apps))

	type pairKey struct{ from, to, proto string }
	allowed := map[pairKey]map[int]bool{}
	encrypt := map[[2]string]bool{}
	// ports each class can be probed on: every port a rule to it names,
	// and every port it serves.
	classPorts := map[string]map[string]map[int]bool{} // class -> proto -> ports
	addPort := func(class, proto string, port int) {
		if classPorts[class] == nil {
			classPorts[class] = map[string]map[int]bool{}
		}
		if classPorts[class][proto] == nil {
			classPorts[class][proto] = map[int]bool{}
		}
		classPorts[class][proto][port] = true
	}
	for _, r := range target.Rules {
		proto := protoOf(r.Protocol)
		k := pairKey{r.From, r.To, proto}
		if allowed[k] == nil {
			allowed[k] = map[int]bool{}
		}
		for _, p := range r.Ports {
			allowed[k][p] = true
			addPort(r.To, proto, p)
		}
		encrypt[classPair(r.From, r.To)] = r.Encrypt
	}
	for _, c := range target.Classes {
		for _, p := range c.Ports {
			addPort(c.Name, protoOf(p.Protocol), p.Port)
		}
	}

	// The tasks of app by (class, server), in the order of their first
	// task's ID; a task's index in own orders the checks as an exhaustive
	// run would (source, then destination, then protocol and port).
	type group struct {
		class, server string
		idx           []int // into own, ascending
	}
	var groups []*group
	groupOf := map[[2]string]*group{}
	for i, t := range own {
		k := [2]string{t.Class, t.Server}
		g := groupOf[k]
		if g == nil {
			g = &group{class: t.Class, server: t.Server}
			groupOf[k] = g
			groups = append(groups, g)
		}
		g.idx = append(g.idx, i)
	}
	type ordered struct {
		src, dst int
		c        Check
	}
	var pairs []ordered
	for _, gs := range groups {
		for _, gd := range groups {
			n := len(gs.idx) * len(gd.idx)
			if gs == gd {
				n -= len(gs.idx) // not a task to itself
			}
			if n == 0 {
				continue
			}
			protos := classPorts[gd.class]
			for _, proto := range sortedKeys(protos) {
				ports := protos[proto]
				rulePorts := allowed[pairKey{gs.class, gd.class, proto}]
				probe := sortedInts(ports)
				// One port no rule of this pair names, to show that a
				// rule opens only its own ports.
				if len(rulePorts) > 0 {
					probe = append(probe, unusedPort(ports))
				}
				for _, port := range probe {
					cov.Combinations++
					cov.Pairs += n
					for _, k := range cov.pick(rng, n) {
						si, di := k/len(gd.idx), k%len(gd.idx)
						if gs == gd {
							// n counts len-1 destinations per source:
							// every task of the group but the source.
							si, di = k/(len(gd.idx)-1), k%(len(gd.idx)-1)
							if di >= si {
								di++
							}
						}
						src, dst := own[gs.idx[si]], own[gd.idx[di]]
						c := newCheck(app, app, src, dst, proto, port)
						switch {
						case !rulePorts[port]:
							c.Expect = Denied
						case src.Server == dst.Server:
							c.Expect = Local
						case encrypt[classPair(src.Class, dst.Class)]:
							c.Expect = Encrypted
						default:
							c.Expect = Plain
						}
						pairs = append(pairs, ordered{gs.idx[si], gd.idx[di], c})
					}
				}
			}
		}
	}
	// In the order an exhaustive run lists them: by source task, then
	// destination task; the ports of one pair stay in the order above.
	sort.SliceStable(pairs, func(i, j int) bool {
		if pairs[i].src != pairs[j].src {
			return pairs[i].src < pairs[j].src
		}
		return pairs[i].dst < pairs[j].dst
	})
	checks := make([]Check, 0, len(pairs))
	for _, p := range pairs {
		checks = append(checks, p.c)
	}

	// Isolation: one task of every other app to the tasks of this app, and
	// back, on every port this app's classes are probed on: denied, but
	// where a rule to an imported service allows it (app to app). These
	// grow with the tasks of app only, and are sampled like the pairs above.
	var linear []Check
	others := make([]string, 0, len(byApp))
	for a := range byApp {
		if a != app {
			others = append(others, a)
		}
	}
	sort.Strings(others)
	for _, o := range others {
		ts := byApp[o]
		sortTasks(ts)
		stranger := ts[0]
		for _, dst := range own {
			for _, proto := range sortedKeys(classPorts[dst.Class]) {
				for _, port := range sortedInts(classPorts[dst.Class][proto]) {
					c := newCheck(app, o, stranger, dst, proto, port)
					ok, enc := links.allowed(o, stranger.Class, app, dst.Class, proto, port)
					c.Expect = expect(ok, enc, stranger, dst)
					linear = append(linear, c)
				}
			}
		}
		// Back the other way, on port 9 (discard): the firewall drops, so
		// a timeout is expected, and a leak shows as connected or refused.
		for _, src := range own {
			c := newCheck(app, app, src, stranger, spec.ProtoTCP, 9)
			ok, enc := links.allowed(app, src.Class, o, stranger.Class, spec.ProtoTCP, 9)
			c.Expect = expect(ok, enc, src, stranger)
			linear = append(linear, c)
		}
	}
	// App to app: the links of this app with others, either way.
	linear = append(linear, crossChecks(app, apps, byApp, links)...)
	// Egress: to outside destinations, allowed and denied.
	linear = append(linear, outsideChecks(app, target, own)...)
	checks = append(checks, cov.sampleChecks(rng, dedupe(linear))...)
	cov.Checks = len(checks)
	if len(checks) > maxChecks {
		return nil, cov, fmt.Errorf("verify: app %q needs %d checks, more than the limit %d: raise --max-checks", app, len(checks), maxChecks)
	}
	return checks, cov, nil
}

// DefaultSample is how many task pairs of each combination a run probes
// unless told otherwise (Options.Sample).
const DefaultSample = 3

// Coverage says what a run's checks cover, and how they were chosen.
type Coverage struct {
	// Combinations is the number of distinct (source app and class,
	// destination class or address, protocol, port, source host,
	// destination host) combinations of the app; each has at least one
	// check.
	Combinations int `json:"combinations"`
	// Pairs is the number of checks an exhaustive run would make: every
	// task pair of every combination.
	Pairs int `json:"pairs"`
	// Checks is the number of checks planned.
	Checks int `json:"checks"`
	// Sample is the most task pairs probed per combination (0 when
	// Exhaustive), drawn with Seed.
	Sample     int   `json:"sample,omitempty"`
	Exhaustive bool  `json:"exhaustive"`
	Seed       int64 `json:"seed"`
	// Outside is the number of checks made from outside the fleet (a
	// published port's allowed and refused clients), beside the task
	// pairs.
	Outside int `json:"outside,omitempty"`
}

// String is the line a report prints, e.g. "covered all 45
// class/port/host combinations with 120 of 21840 task-pair checks (up to 3
// pairs each, seed 7)".
func (c Coverage) String() string {
	how := fmt.Sprintf("up to %d pairs each, seed %d; --exhaustive probes every pair", c.Sample, c.Seed)
	if c.Exhaustive {
		how = "every pair: exhaustive"
	} else if c.Checks == c.Pairs {
		how = fmt.Sprintf("every pair: none has more than %d", c.Sample)
	}
	line := fmt.Sprintf("covered all %d class/port/host combinations with %d of %d task-pair checks (%s)", c.Combinations, c.Checks, c.Pairs, how)
	if c.Outside > 0 {
		line += fmt.Sprintf(", and %d checks from outside clients of published ports", c.Outside)
	}
	return line
}

// pick returns the indices in [0, n) of the pairs to probe in a
// combination of n: all of them when exhaustive or n is at most the
// sample, else Sample distinct ones drawn from rng, ascending.
func (c *Coverage) pick(rng *mrand.Rand, n int) []int {
	k := c.Sample
	if c.Exhaustive || n <= k {
		k = n
	}
	out := make([]int, 0, k)
	if k == n {
		for i := range n {
			out = append(out, i)
		}
		return out
	}
	// Floyd's algorithm: k distinct draws without building [0, n).
	chosen := make(map[int]bool, k)
	for j := n - k; j < n; j++ {
		t := rng.IntN(j + 1)
		if chosen[t] {
			t = j
		}
		chosen[t] = true
		out = append(out, t)
	}
	sort.Ints(out)
	return out
}

// sampleChecks groups checks by combination and keeps what pick chooses
// of each, in their order; it counts the combinations and pairs.
func (c *Coverage) sampleChecks(rng *mrand.Rand, checks []Check) []Check {
	type key struct {
		fromApp, fromClass, toClass, toAddr, proto string
		port                                       int
		fromServer, toServer                       string
	}
	members := map[key][]int{}
	var order []key
	for i, ch := range checks {
		k := key{ch.FromApp, ch.FromClass, ch.ToClass, ch.ToAddr, ch.Protocol, ch.Port, ch.FromServer, ch.ToServer}
		if members[k] == nil {
			order = append(order, k)
		}
		members[k] = append(members[k], i)
	}
	keep := make([]bool, len(checks))
	for _, k := range order {
		m := members[k]
		c.Combinations++
		c.Pairs += len(m)
		for _, j := range c.pick(rng, len(m)) {
			keep[m[j]] = true
		}
	}
	out := make([]Check, 0, len(checks))
	for i, ch := range checks {
		if keep[i] {
			out = append(out, ch)
		}
	}
	return out
}

// Fleet is a running fleet as verify reads it: its apps, its tasks, and
// probes relayed through the server to the agents. *api.Client is one.
type Fleet interface {
	Prober
	ListApps(ctx context.Context) ([]api.App, error)
	ListTasks(ctx context.Context, f api.Filter) ([]api.TaskInfo, error)
}

// RunFleet reads the fleet's apps and tasks and runs app's checks through
// it: what `corridor verify APP` does.
func RunFleet(ctx context.Context, f Fleet, app string, opt Options) (*Report, error) {
	apps, err := f.ListApps(ctx)
	if err != nil {
		return nil, err
	}
	infos, err := f.ListTasks(ctx, api.Filter{})
	if err != nil {
		return nil, err
	}
	specs := make([]spec.App, len(apps))
	for i, a := range apps {
		specs[i] = a.Spec
	}
	tasks := make([]compile.Task, len(infos))
	for i, t := range infos {
		tasks[i] = t.Task
	}
	return Run(ctx, f, app, specs, tasks, opt)
}

// retryPause is the wait before a round of retries; a variable so that a
// test can end a run exactly while it waits.
var retryPause = time.After

// Run plans and runs the checks through p.
func Run(ctx context.Context, p Prober, app string, apps []spec.App, tasks []compile.Task, opt Options) (*Report, error) {
	if opt.Timeout <= 0 {
		opt.Timeout = 2 * time.Second
	}
	if opt.Parallel <= 0 {
		opt.Parallel = 8
	}
	if opt.DeniedParallel <= 0 {
		opt.DeniedParallel = 4 * opt.Parallel
	}
	if opt.RetryFor <= 0 {
		opt.RetryFor = DefaultRetryFor
	}
	for opt.Seed == 0 && !opt.Exhaustive {
		opt.Seed = mrand.Int64N(1 << 31) // short enough to type back
	}
	checks, cov, err := Plan(app, apps, tasks, opt)
	if err != nil {
		return nil, err
	}
	started := time.Now().UTC()
	addrs := map[string]string{}
	for _, t := range tasks {
		addrs[t.ID] = t.Address.String()
	}
	// runAll runs the checks in parallel: those expected to be denied
	// DeniedParallel at a time, the others Parallel at a time, both
	// pools at once.
	runAll := func(cs []*Check) {
		var denied, others []*Check
		for _, c := range cs {
			if c.Expect == Denied {
				denied = append(denied, c)
			} else {
				others = append(others, c)
			}
		}
		var wg sync.WaitGroup
		pool := func(cs []*Check, n int) {
			sem := make(chan struct{}, n)
			for _, c := range cs {
				sem <- struct{}{}
				wg.Go(func() {
					defer func() { <-sem }()
					to := addrs[c.ToTask]
					if c.ToClass == OutsideClass {
						to = c.ToAddr
					}
					runOne(ctx, p, c, to, opt.Timeout)
				})
			}
		}
		wg.Go(func() { pool(denied, opt.DeniedParallel) })
		pool(others, opt.Parallel)
		wg.Wait()
	}
	all := make([]*Check, len(checks))
	for i := range checks {
		all[i] = &checks[i]
	}
	runAll(all)
	// A check that failed short of its expectation (an allowed pair that
	// timed out or found its service not listening yet, a plain marker the
	// capture missed) is run again: one lost SYN on a busy host, or a
	// service still starting, is not a policy failure. The first retry
	// comes at once (a lost packet); later ones, for RetryFor, after
	// growing pauses (a program still starting: a task is running once
	// its program is, which may be a while before its port is open). A
	// check that failed the other way (a denied pair that connected, an
	// encrypted pair whose marker was on the wire) is a leak and stands
	// as it is, whatever an earlier or later probe saw.
	first := map[*Check]string{}
	deadline := time.Now().Add(opt.RetryFor)
	pause := 250 * time.Millisecond
	for round := 0; !opt.NoRetry && ctx.Err() == nil; round++ {
		var again []*Check
		for _, c := range all {
			// An incomplete check (a VM without a probe responder, an
			// agent not answering) is run once more only: waiting
			// does not bring a responder.
			if !c.OK && mayRetry(c.Expect, c.Observed) && (round == 0 || c.Observed != Incomplete) {
				again = append(again, c)
				if _, ok := first[c]; !ok {
					first[c] = c.Observed
				}
			}
		}
		if len(again) == 0 || (round > 0 && !time.Now().Before(deadline)) {
			break
		}
		if round > 0 {
			select {
			case <-ctx.Done():
				// Cancelled while waiting: the checks keep what
				// their last probe saw, none is run cancelled.
				continue
			case <-retryPause(pause):
			}
			pause = min(2*pause, 2*time.Second)
		}
		runAll(again)
		for _, c := range again {
			c.Retried = true
			if c.OK {
				c.Detail = strings.TrimSpace("observed " + first[c] + " at first, " + c.Expect + " on a retry; " + c.Detail)
			}
		}
	}
	rep := &Report{App: app, Checks: checks, Coverage: cov, Started: started, Finished: time.Now().UTC()}
	for _, c := range checks {
		switch {
		case c.Observed == Incomplete:
			rep.Incomplete++
		case c.OK:
			rep.Passed++
		default:
			rep.Failed++
		}
	}
	return rep, ctx.Err()
}

// mayRetry reports whether a check that expected expect and observed
// observed fell short in the harmless direction: less connectivity than
// the policy allows, or a plain marker not seen. Leaks are never retried.
func mayRetry(expect, observed string) bool {
	switch {
	case observed == Incomplete:
		return true
	case expect == Denied:
		return false
	case observed == Denied:
		return true // allowed, but nothing came back in time
	case observed == Open:
		return true // allowed and reached, but its service was not up yet
	case expect == Plain && observed == Encrypted:
		return true // the capture missed the marker
	}
	return false
}

func runOne(ctx context.Context, p Prober, c *Check, toAddr string, timeout time.Duration) {
	marker := make([]byte, 12)
	_, _ = rand.Read(marker)
	req := api.ProbeRequest{
		FromTask: c.FromTask,
		ToAddr:   toAddr,
		Network:  c.Protocol,
		Port:     c.Port,
		// Hex keeps the marker printable in captures and logs.
		Marker:  []byte("corridor-verify-" + hex.EncodeToString(marker)),
		Timeout: timeout,
	}
	c.Time = time.Now().UTC()
	res, err := p.Probe(ctx, c.FromServer, req)
	c.MarkerSeen, c.WireGuardFrames = res.MarkerSeen, res.WireGuardFrames
	if c.ToClass == OutsideClass {
		c.Observed, c.Detail = classifyOutside(res, err)
		// Reached with a reset is reached: the destination is outside,
		// so the path is plain whatever listens there.
		c.OK = c.Observed == c.Expect || (c.Expect == Plain && c.Observed == Open)
		return
	}
	c.Observed, c.Detail = classify(res, err, c.FromServer == c.ToServer)
	c.OK = c.Observed == c.Expect
	if !c.OK && c.Observed == Open && c.Expect != Denied {
		c.Detail = "reached, but nothing listens on the port: the marker could not be sent, so encryption is not proven"
	}
}

func classify(res api.ProbeResult, err error, local bool) (string, string) {
	if err != nil {
		return Incomplete, err.Error()
	}
	// A marker on the wire is a fact whatever else went wrong.
	if res.MarkerSeen {
		switch {
		case local:
			return Plain, "marker seen on the underlay though both tasks share a host"
		case !res.Connected:
			return Plain, strings.TrimSpace("marker seen on the underlay in plain, though the probe did not complete: " + res.Skipped + res.Error)
		}
		return Plain, fmt.Sprintf("rtt %s", res.RTT.Round(time.Microsecond))
	}
	if obs, detail, ok := unconnected(res, "connection refused"); ok {
		return obs, detail
	}
	switch {
	case local:
		return Local, ""
	case res.WireGuardFrames == 0:
		peer := res.PeerUnderlay
		if peer == "" {
			peer = "the destination's host (unknown to the source's agent)"
		}
		return Incomplete, fmt.Sprintf("connected and the marker was not seen, but no WireGuard frames to or from %s crossed the underlay during the probe: encryption not proven", peer)
	default:
		return Encrypted, fmt.Sprintf("rtt %s, %d WireGuard frames with %s", res.RTT.Round(time.Microsecond), res.WireGuardFrames, res.PeerUnderlay)
	}
}

// unconnected classifies a probe that did not connect (or could not run),
// the same for every destination; refused is the detail of a reset. ok is
// false for a probe that connected.
func unconnected(res api.ProbeResult, refused string) (obs, detail string, ok bool) {
	switch {
	case res.Skipped != "":
		return Incomplete, res.Skipped, true
	case res.Error != "":
		return Incomplete, res.Error, true
	case res.TimedOut:
		return Denied, "", true
	case res.Refused:
		return Open, refused, true
	case !res.Connected:
		return Denied, "no connection", true
	}
	return "", "", false
}

func newCheck(app, fromApp string, src, dst compile.Task, proto string, port int) Check {
	return Check{
		App: app, FromApp: fromApp,
		FromClass: src.Class, ToClass: dst.Class,
		FromTask: src.ID, ToTask: dst.ID,
		FromServer: src.Server, ToServer: dst.Server,
		Protocol: proto, Port: port,
	}
}

func classPair(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

func protoOf(p string) string {
	if p == "" {
		return spec.ProtoTCP
	}
	return p
}

// unusedPort returns a port none of used is: 9 (discard) unless taken,
// since nothing real serves it.
func unusedPort(used map[int]bool) int {
	for p := 9; p < 65536; p++ {
		if !used[p] {
			return p
		}
	}
	return 1
}

func sortTasks(ts []compile.Task) {
	sort.Slice(ts, func(i, j int) bool { return ts[i].ID < ts[j].ID })
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedInts(m map[int]bool) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}
