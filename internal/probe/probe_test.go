package probe

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/testnet"
)

func TestDialRejectsBadArguments(t *testing.T) {
	ctx := context.Background()
	m := []byte("m")
	for _, c := range []struct {
		network, addr string
		marker        []byte
		timeout       time.Duration
		want          string
	}{
		{"icmp", "127.0.0.1:1", m, time.Second, `network "icmp"`},
		{"tcp", "localhost:80", m, time.Second, `addr "localhost:80"`},
		{"tcp", "127.0.0.1", m, time.Second, `addr "127.0.0.1"`},
		{"udp", "127.0.0.1:9", m, 0, "timeout"},
		{"tcp", "127.0.0.1:9", nil, time.Second, "marker"},
	} {
		if _, err := Dial(ctx, "", c.network, c.addr, c.marker, c.timeout); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Dial(%s, %s): %v, want an error mentioning %q", c.network, c.addr, err, c.want)
		}
	}
	if _, err := Listen(ctx, "", "tcp", "nohost:1"); err == nil || !strings.Contains(err.Error(), "addr") {
		t.Errorf("Listen with a host name: %v", err)
	}
	if _, err := Dial(ctx, "/var/run/netns/cortst-probe-absent", "tcp", "127.0.0.1:9", m, time.Second); err == nil || !strings.Contains(err.Error(), "netns") {
		t.Errorf("Dial in a missing netns: %v", err)
	}
}

// TestLoopback needs no root: the caller's own namespace, on 127.0.0.1.
func TestLoopback(t *testing.T) {
	ctx := context.Background()
	for _, network := range []string{"tcp4", "udp4"} {
		l, err := Listen(ctx, "", network, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		marker := []byte("cormark-lo-" + network)
		r, err := Dial(ctx, "", network, l.Addr().String(), marker, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if r.Outcome != Connected || !r.Echoed || r.Sent != len(marker) || !r.Reachable() {
			t.Errorf("%s to a Listen: %+v", network, r)
		}
		if !l.Received(marker) || l.Received([]byte("cormark-other")) {
			t.Errorf("%s: Received does not reflect what was sent", network)
		}
		l.Close()
	}
}

// testNet is two namespaces joined by a veth:
//
//	a: corprba 198.19.203.1/30  <->  b: corprbb 198.19.203.2/30
//
// From a, 198.19.207.2 is routed to b, where it is b's address on lo, but
// b's replies from it go to a blackhole: a silent drop, like a firewall's,
// without nftables. 198.19.208.0/24 is unreachable and 198.19.209.0/24
// prohibited in a's routing table.
type testNet struct{ a, b string }

func newTestNet(t *testing.T) testNet {
	t.Helper()
	ns := testnet.Namespaces(t, "probe", "a", "b")
	a, b := ns[0], ns[1]
	for _, cmd := range [][]string{
		{"-n", a, "link", "add", "corprba", "type", "veth", "peer", "name", "corprbb", "netns", b},
		{"-n", a, "addr", "add", "198.19.203.1/30", "dev", "corprba"},
		{"-n", b, "addr", "add", "198.19.203.2/30", "dev", "corprbb"},
		{"-n", a, "link", "set", "corprba", "up"},
		{"-n", b, "link", "set", "corprbb", "up"},
		{"-n", b, "addr", "add", "198.19.207.2/32", "dev", "lo"},
		{"-n", a, "route", "add", "198.19.207.2/32", "via", "198.19.203.2"},
		{"-n", b, "route", "add", "blackhole", "default", "table", "207"},
		{"-n", b, "rule", "add", "from", "198.19.207.2", "lookup", "207"},
		{"-n", a, "route", "add", "unreachable", "198.19.208.0/24"},
		{"-n", a, "route", "add", "prohibit", "198.19.209.0/24"},
	} {
		testnet.IP(t, cmd...)
	}
	return testNet{a: testnet.Path(a), b: testnet.Path(b)}
}

func TestOutcomesBetweenNamespaces(t *testing.T) {
	n := newTestNet(t)
	ctx := context.Background()
	const timeout = 700 * time.Millisecond

	// Listeners in b: on the veth address, and on the address whose
	// replies are blackholed (the SYN arrives, the SYN-ACK is dropped).
	var listeners []*Listener
	for _, la := range [][2]string{{"tcp4", "198.19.203.2:7000"}, {"udp4", "198.19.203.2:7001"}, {"tcp4", "198.19.207.2:7000"}, {"udp4", "198.19.207.2:7001"}} {
		l, err := Listen(ctx, n.b, la[0], la[1])
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		listeners = append(listeners, l)
	}
	// A listener opened in b is not in a: the same port in a is closed.
	if r, err := Dial(ctx, n.a, "tcp4", "127.0.0.1:7000", []byte("x"), timeout); err != nil || r.Outcome != Refused {
		t.Errorf("a's own loopback port 7000: %+v, %v; want refused (the listener is in b)", r, err)
	}

	cases := []struct {
		name, network, addr string
		want                Outcome
		fast                bool // must not wait for the timeout
	}{
		{"tcp to a listener", "tcp4", "198.19.203.2:7000", Connected, true},
		{"udp to a listener", "udp4", "198.19.203.2:7001", Connected, true},
		{"tcp to a closed port", "tcp4", "198.19.203.2:7999", Refused, true},
		{"udp to a closed port", "udp4", "198.19.203.2:7998", Refused, true},
		{"tcp, replies dropped", "tcp4", "198.19.207.2:7000", Timeout, false},
		{"udp, replies dropped", "udp4", "198.19.207.2:7001", Timeout, false},
		{"tcp to an unreachable net", "tcp4", "198.19.208.5:80", Unreachable, true},
		{"udp to an unreachable net", "udp4", "198.19.208.5:80", Unreachable, true},
		{"tcp to a prohibited net", "tcp4", "198.19.209.5:80", Prohibited, true},
	}
	for _, c := range cases {
		marker := []byte("cormark-" + strings.ReplaceAll(c.name, " ", "-"))
		start := time.Now()
		r, err := Dial(ctx, n.a, c.network, c.addr, marker, timeout)
		took := time.Since(start)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		t.Logf("%s: %s in %v (rtt %v) %s", c.name, r.Outcome, took.Round(time.Millisecond), r.RTT, r.Err)
		if r.Outcome != c.want {
			t.Errorf("%s: outcome %s (%s), want %s", c.name, r.Outcome, r.Err, c.want)
		}
		if c.fast && took > timeout/2 {
			t.Errorf("%s: took %v, want an answer well before the %v timeout", c.name, took, timeout)
		}
		if !c.fast && took < timeout {
			t.Errorf("%s: took %v, under the timeout", c.name, took)
		}
		if c.want == Connected && (!r.Echoed || r.RTT <= 0 || r.RTT > timeout) {
			t.Errorf("%s: %+v, want the marker echoed and a round trip", c.name, r)
		}
		if r.Reachable() != (c.want == Connected || c.want == Refused) {
			t.Errorf("%s: Reachable() = %v", c.name, r.Reachable())
		}
	}
	if !listeners[0].Received([]byte("cormark-tcp-to-a-listener")) || !listeners[1].Received([]byte("cormark-udp-to-a-listener")) {
		t.Error("the listeners in b did not receive the markers")
	}
	// With replies dropped, the request still got there: a timeout says
	// nothing about the forward direction.
	if c, _ := listeners[3].Counts(); c != 0 {
		t.Errorf("udp listener counted %d tcp connections", c)
	}
	if _, d := listeners[3].Counts(); d == 0 {
		t.Error("udp datagram with a blackholed reply never reached b")
	}
}

func TestDialHonoursCallerContext(t *testing.T) {
	n := newTestNet(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := Dial(ctx, n.a, "tcp4", "198.19.207.2:7000", []byte("x"), 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("Dial with a cancelled context: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Dial took %v after its context was cancelled", d)
	}
}
