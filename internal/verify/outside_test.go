package verify

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// outsideNet answers probes to outside destinations the way a correct
// data plane and an outside world would: allowed (class, address, port)
// connect with the marker in plain on the underlay (or are refused where
// nothing listens), everything else is unreachable. Probes to guests are
// left to fakeNet.
type outsideNet struct {
	*fakeNet
	allow   map[string]bool // "class addr/proto/port"
	refused map[netip.Addr]bool
	leak    string // one "class addr/proto/port" let through though denied
	mu      sync.Mutex
	seen    []string
}

func (o *outsideNet) Probe(ctx context.Context, server string, req api.ProbeRequest) (api.ProbeResult, error) {
	to := netip.MustParseAddr(req.ToAddr)
	if to.IsValid() && !strings.HasPrefix(req.ToAddr, "100.64.") {
		src := o.byID[req.FromTask]
		if src.Server != server {
			return api.ProbeResult{}, fmt.Errorf("probe of %s asked of %s", req.FromTask, server)
		}
		k := fmt.Sprintf("%s %s/%s/%d", src.Class, to, req.Network, req.Port)
		o.mu.Lock()
		o.seen = append(o.seen, k)
		o.mu.Unlock()
		switch {
		case o.allow[k] && o.refused[to]:
			return api.ProbeResult{Refused: true}, nil
		case o.allow[k] || k == o.leak:
			return api.ProbeResult{Connected: true, MarkerSeen: true, RTT: time.Millisecond}, nil
		}
		return api.ProbeResult{}, nil // unreachable: not connected
	}
	return o.fakeNet.Probe(ctx, server, req)
}

func shopWithEgress() ([]spec.App, []compile.Task) {
	apps, tasks := shop()
	apps[0].Egress = []spec.Egress{
		{From: "web", To: []string{"198.18.0.250", "203.0.113.0/24"}, Ports: []int{443}},
		{From: "app", To: []string{"198.18.0.251"}, Ports: []int{53}, Protocol: "udp"},
	}
	apps[0].Resolvers = []string{"198.18.0.253"}
	return apps, tasks
}

func TestOutsidePlan(t *testing.T) {
	apps, tasks := shopWithEgress()
	checks, _, err := Plan("shop", apps, tasks, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range checks {
		if c.ToClass != OutsideClass {
			continue
		}
		if c.ToTask != "" || c.ToServer != "" {
			t.Errorf("outside check with a task: %+v", c)
		}
		got[fmt.Sprintf("%s %s/%s/%d", c.FromTask, c.ToAddr, c.Protocol, c.Port)] = c.Expect
	}
	for k, want := range map[string]string{
		"shop/web/0 198.18.0.250/tcp/443": Plain,  // allowed
		"shop/web/1 198.18.0.250/tcp/443": Plain,  // every task of the class
		"shop/web/0 198.18.0.250/tcp/9":   Denied, // a port not named
		"shop/app/0 198.18.0.250/tcp/443": Denied, // another class: not named for it
		"shop/db/0 198.18.0.250/tcp/443":  Denied,
		"shop/app/1 198.18.0.251/udp/53":  Plain,
		"shop/app/1 198.18.0.251/udp/9":   Denied,
		"shop/web/0 198.18.0.251/udp/53":  Denied,
		"shop/db/0 198.18.0.253/tcp/53":   Plain, // resolvers: every class
		"shop/web/1 198.18.0.253/tcp/9":   Denied,
	} {
		if got[k] != want {
			t.Errorf("check %s: expect %q, want %q", k, got[k], want)
		}
	}
	for k := range got {
		if strings.Contains(k, "203.0.113.") {
			t.Errorf("a CIDR destination was probed (%s): it names no address known to answer", k)
		}
		if strings.HasPrefix(k, "blog/") {
			t.Errorf("another app's task probed the outside: %s", k)
		}
	}
	// Without egress or resolvers, no outside check.
	plain, _ := shop()
	cs, _, err := Plan("shop", plain, tasks, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.ToClass == OutsideClass {
			t.Fatalf("outside check without egress: %+v", c)
		}
	}
}

func newOutsideNet(apps []spec.App, tasks []compile.Task) *outsideNet {
	o := &outsideNet{fakeNet: newFakeNet(apps, tasks), allow: map[string]bool{}, refused: map[netip.Addr]bool{}}
	for _, k := range []string{"web 198.18.0.250/tcp/443", "app 198.18.0.251/udp/53", "web 198.18.0.253/tcp/53", "app 198.18.0.253/tcp/53", "db 198.18.0.253/tcp/53"} {
		o.allow[k] = true
	}
	return o
}

func TestOutsideRun(t *testing.T) {
	apps, tasks := shopWithEgress()
	o := newOutsideNet(apps, tasks)
	o.refused[netip.MustParseAddr("198.18.0.253")] = true // nothing listens on tcp/53 there: reached all the same
	rep, err := Run(context.Background(), o, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range rep.Checks {
		if !c.OK {
			t.Errorf("mismatch on a correct network: %+v", c)
		}
		if c.ToClass == OutsideClass {
			n++
		}
	}
	if n == 0 || !rep.OK() {
		t.Fatalf("outside checks %d, report ok %v", n, rep.OK())
	}

	// A hole: app reaches 198.18.0.250:443, which only web may.
	o = newOutsideNet(apps, tasks)
	o.leak = "app 198.18.0.250/tcp/443"
	rep, err = Run(context.Background(), o, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var hole bool
	for _, c := range rep.Checks {
		if c.OK {
			continue
		}
		if c.FromClass == "app" && c.ToAddr == "198.18.0.250" && c.Expect == Denied && c.Observed == Plain && !c.Retried {
			hole = true
			continue
		}
		t.Errorf("unexpected mismatch %+v", c)
	}
	if !hole || rep.OK() {
		t.Fatalf("hole caught %v, report ok %v", hole, rep.OK())
	}

	// Allowed but unreachable (egress not applied): a mismatch.
	o = newOutsideNet(apps, tasks)
	delete(o.allow, "web 198.18.0.250/tcp/443")
	rep, _ = Run(context.Background(), o, "shop", apps, tasks, Options{Timeout: time.Second, RetryFor: 100 * time.Millisecond})
	if rep.OK() {
		t.Fatal("an allowed outside destination that did not answer passed")
	}
}

func TestClassifyOutside(t *testing.T) {
	for _, c := range []struct {
		res  api.ProbeResult
		want string
	}{
		{api.ProbeResult{Connected: true, MarkerSeen: true}, Plain},
		{api.ProbeResult{Connected: true}, Incomplete}, // connected, marker unseen: cannot vouch
		{api.ProbeResult{Refused: true}, Open},
		{api.ProbeResult{TimedOut: true}, Denied},
		{api.ProbeResult{}, Denied},
		{api.ProbeResult{Error: "x"}, Incomplete},
		{api.ProbeResult{TimedOut: true, MarkerSeen: true}, Plain}, // a marker seen is a fact
	} {
		if got, _ := classifyOutside(c.res, nil); got != c.want {
			t.Errorf("classifyOutside(%+v) = %s, want %s", c.res, got, c.want)
		}
	}
	if got, _ := classifyOutside(api.ProbeResult{}, fmt.Errorf("agent down")); got != Incomplete {
		t.Errorf("probe error: %s", got)
	}
}
