package dataplane

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/dataplane/wguser"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// Ports of the scenario's rules.
const (
	portDB    = 5432
	portCache = 6379
	portSSH   = 22
)

// scenario is app "shop" on two hosts:
//
//	host A: a1 (web), a2 (batch)      host B: b1 (db), b2 (cache)
//	web   -> db    5432  encrypted
//	batch -> db    5432  plain        (same destination, other path)
//	web   -> cache 6379  plain
//	batch -> cache: no rule
type scenario struct {
	*env
	a1, a2, b1, b2 *guest
}

func newScenario(t *testing.T) *scenario { return newScenarioMode(t, false) }

// newScenarioMode is newScenario with kernel WireGuard when kernel is set
// (the caller has checked that the kernel has it: needKernelWireGuard).
func newScenarioMode(t *testing.T, kernel bool) *scenario {
	e := newEnv(t)
	e.a.kernel, e.b.kernel = kernel, kernel
	s := &scenario{env: e}
	s.a1 = e.addGuest(e.a, "a1", "shop", "web", "100.64.0.1")
	s.a2 = e.addGuest(e.a, "a2", "shop", "batch", "100.64.0.2")
	s.b1 = e.addGuest(e.b, "b1", "shop", "db", "100.64.1.1")
	s.b2 = e.addGuest(e.b, "b2", "shop", "cache", "100.64.1.2")
	e.a.open(t)
	e.b.open(t)
	for _, g := range []*guest{s.a1, s.b1, s.b2} {
		serve(t, g, portDB)
		serve(t, g, portCache)
		serve(t, g, portSSH)
	}
	return s
}

func p32(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 32) }

func hostGuests(h *host) []compile.Guest {
	var gs []compile.Guest
	for _, g := range h.guests {
		gs = append(gs, compile.Guest{Task: g.app + "/" + g.class + "/0", App: g.app, Class: g.class, Address: g.addr, HostIf: g.hostIf})
	}
	return gs
}

func fw(dir, from, to string, srcs, dsts []netip.Addr, port int, enc bool, remote []netip.Addr) compile.FirewallRule {
	return compile.FirewallRule{App: "shop", FromClass: from, ToClass: to, Direction: dir, Sources: srcs, Dests: dsts,
		Protocol: "tcp", Ports: []int{port}, Encrypt: enc, RemoteSources: remote}
}

// states builds both hosts' HostState by hand, as the compiler would.
func (s *scenario) states() (a, b compile.HostState) {
	A, B := s.a, s.b
	a1, a2, b1, b2 := s.a1.addr, s.a2.addr, s.b1.addr, s.b2.addr
	ip := func(xs ...netip.Addr) []netip.Addr { return xs }
	a = compile.HostState{
		Host: "a", Address: A.underlay, VTEPMAC: A.vtepMAC, WireGuardPort: 51820,
		Guests: hostGuests(A),
		Peers: []compile.Peer{{Server: "b", PublicKey: B.dp.PublicKey().String(),
			Endpoint: netip.AddrPortFrom(B.underlay, 51820), AllowedIPs: []netip.Prefix{p32(b1)}}},
		VXLAN: []compile.VXLANEntry{{Server: "b", Underlay: B.underlay, MAC: B.vtepMAC, Guests: ip(b1, b2)}},
		Routes: []compile.Route{
			{Sources: ip(a1), Dest: b1, Server: "b", Encrypt: true},
			{Sources: ip(a2), Dest: b1, Server: "b", Encrypt: false},
			{Sources: ip(a1), Dest: b2, Server: "b", Encrypt: false},
		},
		Firewall: []compile.FirewallRule{
			fw(compile.Egress, "web", "db", ip(a1), ip(b1), portDB, true, nil),
			fw(compile.Egress, "batch", "db", ip(a2), ip(b1), portDB, false, nil),
			fw(compile.Egress, "web", "cache", ip(a1), ip(b2), portCache, false, nil),
		},
	}
	b = compile.HostState{
		Host: "b", Address: B.underlay, VTEPMAC: B.vtepMAC, WireGuardPort: 51820,
		Guests: hostGuests(B),
		Peers: []compile.Peer{{Server: "a", PublicKey: A.dp.PublicKey().String(),
			Endpoint: netip.AddrPortFrom(A.underlay, 51820), AllowedIPs: []netip.Prefix{p32(a1)}}},
		VXLAN: []compile.VXLANEntry{{Server: "a", Underlay: A.underlay, MAC: A.vtepMAC, Guests: ip(a1, a2)}},
		Firewall: []compile.FirewallRule{
			fw(compile.Ingress, "web", "db", ip(a1), ip(b1), portDB, true, ip(a1)),
			fw(compile.Ingress, "batch", "db", ip(a2), ip(b1), portDB, false, ip(a2)),
			fw(compile.Ingress, "web", "cache", ip(a1), ip(b2), portCache, false, ip(a1)),
		},
	}
	return a, b
}

func (s *scenario) apply(t *testing.T) (a, b compile.HostState) {
	t.Helper()
	a, b = s.states()
	ctx := context.Background()
	if err := s.a.dp.Apply(ctx, a); err != nil {
		t.Fatalf("Apply on A: %v", err)
	}
	if err := s.b.dp.Apply(ctx, b); err != nil {
		t.Fatalf("Apply on B: %v", err)
	}
	return a, b
}

type counters struct{ vxTx, wgTx, vxRxB, wgRxB uint64 }

func (s *scenario) counters(t *testing.T) counters {
	var c counters
	c.vxTx, _ = s.a.stats(t, VXLANName)
	c.wgTx, _ = s.a.stats(t, s.a.wgName)
	_, c.vxRxB = s.b.stats(t, VXLANName)
	_, c.wgRxB = s.b.stats(t, s.b.wgName)
	return c
}

// quiet waits until no packet has crossed the tunnel devices for 200ms (the
// close of an earlier connection, a handshake) and returns the counters.
func (s *scenario) quiet(t *testing.T) counters {
	c := s.counters(t)
	for range 20 {
		time.Sleep(200 * time.Millisecond)
		n := s.counters(t)
		if n == c {
			return c
		}
		c = n
	}
	t.Fatalf("tunnel devices never went quiet: %+v", c)
	return c
}

// mustConnect checks that from reaches to:port, and by which device: the
// counters of the other device on both sides must not move.
func (s *scenario) mustConnect(t *testing.T, from, to *guest, port int, encrypted bool) {
	t.Helper()
	before := s.quiet(t)
	if err := connects(t, from, to, port); err != nil {
		t.Fatalf("%s -> %s:%d: %v", from.addr, to.addr, port, err)
	}
	after := s.counters(t)
	wg := after.wgTx > before.wgTx && after.wgRxB > before.wgRxB
	vx := after.vxTx > before.vxTx && after.vxRxB > before.vxRxB
	vxMoved := after.vxTx != before.vxTx || after.vxRxB != before.vxRxB
	wgMoved := after.wgTx != before.wgTx || after.wgRxB != before.wgRxB
	switch {
	case encrypted && (!wg || vxMoved):
		t.Fatalf("%s -> %s:%d should go by %s only: before %+v after %+v", from.addr, to.addr, port, s.a.wgName, before, after)
	case !encrypted && (!vx || wgMoved):
		t.Fatalf("%s -> %s:%d should go by %s only: before %+v after %+v", from.addr, to.addr, port, VXLANName, before, after)
	}
}

func (s *scenario) mustNotConnect(t *testing.T, from, to *guest, port int) {
	t.Helper()
	c, err := dial(t, from, to, port, 700*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatalf("%s -> %s:%d connected; the policy denies it", from.addr, to.addr, port)
	}
}

// dump is the kernel state we own in h, for before/after comparisons: nft
// handles change when the table is replaced, so the dump shows it.
func (h *host) dump(t *testing.T) string {
	var b strings.Builder
	for _, args := range [][]string{
		{"ip", "-d", "link", "show", VXLANName},
		{"ip", "-d", "link", "show", h.wgName},
		{"ip", "rule", "show"},
		{"ip", "route", "show", "table", "5181"},
		{"ip", "route", "show", "table", "5182"},
		{"ip", "neigh", "show", "dev", VXLANName},
		{"bridge", "fdb", "show", "dev", VXLANName},
		{"nft", "-a", "list", "table", "inet", NFTTable},
	} {
		out, _ := exec.Command("ip", append([]string{"netns", "exec", h.name}, args...)...).CombinedOutput()
		b.WriteString(strings.Join(args, " ") + "\n" + string(out))
	}
	return b.String()
}

// TestDataplane runs the data plane with wireguard-go (Config.Userspace),
// as on hosts without the kernel module; TestDataplaneKernel runs the same
// with kernel WireGuard where the module exists.
func TestDataplane(t *testing.T) { testDataplane(t, false) }

func TestDataplaneKernel(t *testing.T) {
	needKernelWireGuard(t, "the user-space variant, TestDataplane, covers the rest")
	testDataplane(t, true)
}

// needKernelWireGuard skips, saying why and what covers the rest
// (elsewhere), when the kernel cannot make a WireGuard device (no module).
func needKernelWireGuard(t testing.TB, elsewhere string) {
	t.Helper()
	testnet.NeedRoot(t, "creates network namespaces")
	ns := fmt.Sprintf("cortst-dp-kwg-%d", os.Getpid())
	run(t, "ip", "netns", "add", ns)
	defer exec.Command("ip", "netns", "del", ns).Run()
	out, err := exec.Command("ip", "-n", ns, "link", "add", "corwk", "type", "wireguard").CombinedOutput()
	if err != nil {
		t.Skipf("kernel WireGuard unavailable here (ip link add type wireguard: %v: %s); %s", err, strings.TrimSpace(string(out)), elsewhere)
	}
}

func (s *scenario) mode() string {
	if s.a.kernel {
		return "kernel"
	}
	return "userspace"
}

func testDataplane(t *testing.T, kernel bool) {
	s := newScenarioMode(t, kernel)
	stA, stB := s.apply(t)
	// As the agent does: only one host initiates the first handshake, and
	// it is driven (retried) by RetryStalledHandshakes.
	driveHandshakes(t, s, 3*time.Second)

	t.Run("plain", func(t *testing.T) {
		s.mustConnect(t, s.a1, s.b2, portCache, false)
	})
	t.Run("encrypted", func(t *testing.T) {
		s.mustConnect(t, s.a1, s.b1, portDB, true)
		st, err := s.a.dp.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode != s.mode() || len(st.Peers) != 1 || st.Peers[0].Server != "b" || st.Peers[0].LastHandshake.IsZero() || st.Peers[0].TxBytes == 0 {
			t.Fatalf("status after an encrypted exchange: %+v", st)
		}
		// Flow offload is on exactly where the kernel has flowtables
		// (the VM hosts' e2e test proves it offloads there).
		has, err := s.a.dp.ProbeFlowtables()
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]string{true: "on", false: "unavailable"}[has]; st.FlowOffload != want || st.OffloadedEncrypted != 0 {
			t.Fatalf("flow offload %q (encrypted connections offloaded: %d), want %q: the kernel has flowtables: %v", st.FlowOffload, st.OffloadedEncrypted, want, has)
		}
	})
	t.Run("datapath-threads", func(t *testing.T) {
		if s.a.kernel {
			t.Skip("kernel WireGuard: no datapath process")
		}
		testDatapathThreads(t, s.a)
	})
	t.Run("per-pair", func(t *testing.T) {
		// b1 is reached encrypted from a1 and in plain from a2.
		s.mustConnect(t, s.a2, s.b1, portDB, false)
		s.mustConnect(t, s.a1, s.b1, portDB, true)
	})
	t.Run("underlay-untracked", func(t *testing.T) {
		testUnderlayUntracked(t, s)
	})
	t.Run("denied", func(t *testing.T) {
		s.mustNotConnect(t, s.a1, s.b1, portSSH)   // port not in the rule
		s.mustNotConnect(t, s.a2, s.b2, portCache) // no rule for the pair
		s.mustNotConnect(t, s.a1, s.b2, portDB)    // port of another pair
		s.mustNotConnect(t, s.a2, s.a1, portSSH)   // no rule, same host
		stB, err := s.b.dp.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		stA, err := s.a.dp.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		drops := map[string]uint64{}
		for _, d := range append(stA.Drops, stB.Drops...) {
			drops[counterName(d.Kind, d.App, d.FromClass, d.ToClass)] += d.Packets
		}
		// a1 -> b1:22 is the web->db pair on a port its rule does not
		// allow; a2 -> a1 has no rule: dropped as batch's egress. a2 ->
		// b2 has no rule and so no mark: the guest routing rule sends it
		// to table TableGuest, where it is unreachable (were that rule
		// gone, the forward chain would drop it as a path drop: see
		// fail-closed).
		if drops["pair:shop:web:db"] == 0 || drops["out:shop:batch:"] == 0 || drops["pair:shop:web:cache"] == 0 {
			t.Fatalf("drop counters: %v", drops)
		}
		// The connections a1 -> b1:5432 made above were let out by the
		// web->db egress rule, which counts them (on A, their source's
		// host); a bytes count goes with them.
		var allowBytes uint64
		for _, d := range stA.Drops {
			if d.Kind == Allowed && d.App == "shop" && d.FromClass == "web" && d.ToClass == "db" {
				allowBytes = d.Bytes
			}
		}
		if drops["allow:shop:web:db"] == 0 || allowBytes == 0 {
			t.Fatalf("allowed-connection counter of web->db: %v (bytes %d)", drops, allowBytes)
		}
	})
	t.Run("guest-source", func(t *testing.T) {
		testGuestSource(t, s)
	})
	t.Run("encrypted-pair-refused-in-plain", func(t *testing.T) {
		// Host A misroutes web->db in plain (as a stale or forged host
		// would): B accepts web->db only from corw.
		bad := stA
		bad.Routes = slices.Clone(stA.Routes)
		bad.Routes[0].Encrypt = false
		bad.Firewall = slices.Clone(stA.Firewall)
		bad.Firewall[0].Encrypt = false
		if err := s.a.dp.Apply(context.Background(), bad); err != nil {
			t.Fatal(err)
		}
		s.mustNotConnect(t, s.a1, s.b1, portDB)
		if err := s.a.dp.Apply(context.Background(), stA); err != nil {
			t.Fatal(err)
		}
		s.mustConnect(t, s.a1, s.b1, portDB, true)
	})
	t.Run("fail-closed", func(t *testing.T) {
		testFailClosed(t, s, stA)
	})
	t.Run("readable", func(t *testing.T) {
		// nft (Debian's 1.0.6 here) prints every interface name.
		out := run(t, "ip", "netns", "exec", s.b.name, "nft", "list", "table", "inet", NFTTable)
		if strings.Contains(out, `""`) || !strings.Contains(out, `"`+s.b1.hostIf+`" . 100.64.1.1`) || !strings.Contains(out, `iifname "`+s.b.wgName+`"`) {
			t.Fatalf("nft list table inet %s does not show the interface names:\n%s", NFTTable, out)
		}
		t.Logf("nft list table inet %s on B:\n%s", NFTTable, out)
	})
	t.Run("injection", func(t *testing.T) {
		testInjection(t, s)
	})
	t.Run("vtep-spoof", func(t *testing.T) {
		testVTEPSpoof(t, s, stB)
	})
	t.Run("flush", func(t *testing.T) {
		testFlushDuringTraffic(t, s, stA, stB)
	})
	t.Run("agent-kill", func(t *testing.T) {
		testAgentKill(t, s, stA, stB)
	})
	t.Run("datapath-kill", func(t *testing.T) {
		testDatapathKill(t, s, stA, stB)
	})
	t.Run("egress", testEgress)
	t.Run("ingress", testIngress)
	t.Run("idempotent", func(t *testing.T) {
		testIdempotent(t, s, stA, stB)
	})
	t.Run("shrink", func(t *testing.T) {
		testShrink(t, s, stA)
	})
	t.Run("remove", func(t *testing.T) {
		testRemove(t, s)
	})
}

// leakCounter adds, in h's namespace, a test-owned nft table counting what
// leaves on the underlay in plain: VXLAN frames and raw overlay packets.
func leakCounter(t *testing.T, h *host) func() string {
	rules := `table inet cortst_leak {
	chain out {
		type filter hook postrouting priority 0; policy accept;
		oifname "coru0" udp dport 4789 counter
		oifname "coru0" ip daddr 100.64.0.0/10 counter
	}
}
`
	cmd := exec.Command("ip", "netns", "exec", h.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
	read := func() string {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", h.name, "nft", "list", "table", "inet", "cortst_leak").CombinedOutput()
		if err != nil {
			t.Fatalf("read the leak counter: nft list table inet cortst_leak: %v: %s", err, out)
		}
		var lines []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "counter") {
				lines = append(lines, strings.TrimSpace(l))
			}
		}
		if len(lines) != 2 {
			t.Fatalf("leak counter: want 2 counters, got %q", lines)
		}
		return strings.Join(lines, "; ")
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "exec", h.name, "nft", "delete", "table", "inet", "cortst_leak").Run()
	})
	return read
}

// leakControl shows that the leak counter of h counts what it exists for:
// a plain packet to a guest address sent out on the underlay. It sends
// one UDP datagram from h itself to dst (out by h's default route) and
// fails unless the counter moved. It returns the counter afterwards.
func leakControl(t *testing.T, h *host, leaks func() string, dst netip.Addr) string {
	t.Helper()
	before := leaks()
	if err := sendControlPacket(t, h, dst); err != nil {
		t.Fatalf("positive control: send a plain packet from %s to %s: %v", h.name, dst, err)
	}
	var after string
	for range 50 {
		if after = leaks(); after != before {
			return after
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("positive control: the leak counter of %s did not count a plain packet to %s sent on the underlay (%q): it cannot see a leak", h.name, dst, after)
	return ""
}

// sendControlPacket sends one UDP datagram ("corridor-leak-control", to
// port 9) from h itself to dst, out by h's default route: the plain packet
// of a positive control that a leak detector must see.
func sendControlPacket(t *testing.T, h *host, dst netip.Addr) error {
	t.Helper()
	return inNS(t, h.name, func() error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(dst, 9).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("corridor-leak-control"))
		return err
	})
}

func testFailClosed(t *testing.T, s *scenario, stA compile.HostState) {
	ctx := context.Background()
	leaks := leakCounter(t, s.a)
	// Positive controls first: the counter sees a plain overlay packet
	// leaving by the default route, and a VXLAN frame (a plain pair).
	before := leakControl(t, s.a, leaks, s.b1.addr)
	s.mustConnect(t, s.a1, s.b2, portCache, false)
	if after := leaks(); after == before {
		t.Fatalf("positive control: the leak counter did not count the VXLAN frames of a plain pair: %q", after)
	}
	before = s.quietLeaks(t, leaks)
	vxBefore, _ := s.a.stats(t, VXLANName)
	dropsBefore := s.pathDrops(t)
	// noLeak checks, after each way of breaking the encrypted path, that
	// nothing left A in plain (encrypted exchanges in between move
	// neither counter: they leave as WireGuard on port 51820).
	noLeak := func(broken string) {
		t.Helper()
		if after := leaks(); after != before {
			t.Fatalf("plain packets left on the underlay while %s: before %q after %q", broken, before, after)
		}
		if vxAfter, _ := s.a.stats(t, VXLANName); vxAfter != vxBefore {
			t.Fatalf("%s sent %d packets while %s", VXLANName, vxAfter-vxBefore, broken)
		}
	}

	// The peer disappears from corw behind our back.
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	peer := stA.Peers[0]
	key, _ := wgtypes.ParseKey(peer.PublicKey)
	if err := wg.ConfigureDevice(s.a.wgName, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: key, Remove: true}}}); err != nil {
		t.Fatal(err)
	}
	s.mustNotConnect(t, s.a1, s.b1, portDB)
	noLeak("the WireGuard peer was missing")

	// The encrypted route disappears.
	if err := s.a.dp.Apply(ctx, stA); err != nil {
		t.Fatal(err)
	}
	if changes := s.a.dp.LastChanges(); len(changes) != 1 || !strings.Contains(changes[0], "WireGuard") {
		t.Fatalf("repair after peer removal changed %q; want only the WireGuard peer back", changes)
	}
	s.mustConnect(t, s.a1, s.b1, portDB, true)
	run(t, "ip", "-n", s.a.name, "route", "del", s.b1.addr.String()+"/32", "table", "5181")
	s.mustNotConnect(t, s.a1, s.b1, portDB)
	noLeak("the encrypted route was missing")
	// The routing layer on its own: the encrypted table ends in an
	// unreachable route, so the lookup fails there and never falls
	// through to the main table's default route.
	// (Asked without "iif": from a guest interface, the guest rule
	// would answer unreachable whatever table 5181 holds.)
	out, _ := exec.Command("ip", "-n", s.a.name, "route", "get", s.b1.addr.String(), "mark", fmt.Sprintf("%#x", MarkEncrypt)).CombinedOutput()
	if o := strings.ToLower(string(out)); !strings.Contains(o, "unreachable") && !strings.Contains(o, "no route to host") {
		t.Errorf("with the encrypted route gone, the lookup for a marked packet is not unreachable:\n%s", out)
	}

	// The fwmark rule disappears, and the guest rules with it: a marked
	// packet falls to the main table and its default route; the forward
	// chain must drop it.
	if err := s.a.dp.Apply(ctx, stA); err != nil {
		t.Fatal(err)
	}
	s.mustConnect(t, s.a1, s.b1, portDB, true)
	run(t, "ip", "-n", s.a.name, "rule", "del", "priority", fmt.Sprint(RulePrioEncrypt))
	for _, g := range s.a.guests {
		exec.Command("ip", "-n", s.a.name, "rule", "del", "priority", fmt.Sprint(RulePrioGuest), "iif", g.hostIf).Run()
	}
	s.mustNotConnect(t, s.a1, s.b1, portDB)
	noLeak("the fwmark rule was missing")
	if d := s.pathDrops(t); d <= dropsBefore {
		t.Errorf("with the fwmark rule gone, the forward chain dropped nothing (path drops %d, were %d)", d, dropsBefore)
	}

	if err := s.a.dp.Apply(ctx, stA); err != nil {
		t.Fatal(err)
	}
	s.mustConnect(t, s.a1, s.b1, portDB, true)
}

// quietLeaks waits until the leak counter stops moving (the close of an
// earlier connection) and returns it.
func (s *scenario) quietLeaks(t *testing.T, leaks func() string) string {
	t.Helper()
	s.quiet(t)
	return leaks()
}

// pathDrops is A's count of packets dropped for leaving by the wrong path.
func (s *scenario) pathDrops(t *testing.T) uint64 {
	t.Helper()
	return s.a.dropCount(t, DropPath)
}

func testIdempotent(t *testing.T, s *scenario, stA, stB compile.HostState) {
	ctx := context.Background()
	// A connection opened before and used after a no-op Apply and an
	// agent restart must not notice either.
	conn, err := dial(t, s.a1, s.b1, portDB, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := exchange(conn, "before"); err != nil {
		t.Fatal(err)
	}
	statusBefore, err := s.a.dp.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := s.a.dp.datapathPID()
	if s.a.kernel {
		pid = -1 // no datapath process to keep
	}
	dumpA, dumpB := s.a.dump(t), s.b.dump(t)

	start := time.Now()
	if err := s.a.dp.Apply(ctx, stA); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if c := s.a.dp.LastChanges(); len(c) != 0 {
		t.Fatalf("second Apply changed %q", c)
	}
	t.Logf("no-op Apply took %s", took)

	// Agent restart: close the handles and open new ones.
	s.a.dp.Close()
	s.a.open(t) // the cleanup registered by newScenario removes it
	if err := s.a.dp.Apply(ctx, stA); err != nil {
		t.Fatal(err)
	}
	if c := s.a.dp.LastChanges(); len(c) != 0 {
		t.Fatalf("Apply after restart changed %q", c)
	}
	if err := s.b.dp.Apply(ctx, stB); err != nil {
		t.Fatal(err)
	}
	if c := s.b.dp.LastChanges(); len(c) != 0 {
		t.Fatalf("second Apply on B changed %q", c)
	}
	if got := s.a.dump(t); got != dumpA {
		t.Fatalf("kernel state of A changed:\nbefore:\n%s\nafter:\n%s", dumpA, got)
	}
	if got := s.b.dump(t); got != dumpB {
		t.Fatalf("kernel state of B changed:\nbefore:\n%s\nafter:\n%s", dumpB, got)
	}
	if got := s.a.dp.datapathPID(); !s.a.kernel && (got != pid || pid == 0) {
		t.Fatalf("datapath process %d, was %d", got, pid)
	}
	statusAfter, err := s.a.dp.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !statusAfter.Peers[0].LastHandshake.Equal(statusBefore.Peers[0].LastHandshake) {
		t.Fatalf("handshake redone: %v then %v", statusBefore.Peers[0].LastHandshake, statusAfter.Peers[0].LastHandshake)
	}
	if err := exchange(conn, "after"); err != nil {
		t.Fatalf("connection opened before the restart: %v", err)
	}
}

func testShrink(t *testing.T, s *scenario, stA compile.HostState) {
	ctx := context.Background()
	small := stA
	small.Peers = nil
	small.VXLAN = nil
	small.Routes = nil
	small.Firewall = nil
	if err := s.a.dp.Apply(ctx, small); err != nil {
		t.Fatal(err)
	}
	dump := s.a.dump(t)
	for _, gone := range []string{s.b1.addr.String(), s.b2.addr.String(), s.b.vtepMAC, s.b.underlay.String()} {
		if strings.Contains(dump, gone) {
			t.Fatalf("%s still in the kernel state after the state shrank:\n%s", gone, dump)
		}
	}
	dev, err := s.a.dp.wg.Device(s.a.wgName)
	if err != nil {
		t.Fatal(err)
	}
	if len(dev.Peers) != 0 {
		t.Fatalf("peers left: %v", dev.Peers)
	}
	s.mustNotConnect(t, s.a1, s.b2, portCache)
	s.mustNotConnect(t, s.a1, s.b1, portDB)
	if err := s.a.dp.Apply(ctx, stA); err != nil {
		t.Fatal(err)
	}
	s.mustConnect(t, s.a1, s.b1, portDB, true)
	s.mustConnect(t, s.a1, s.b2, portCache, false)
}

func testRemove(t *testing.T, s *scenario) {
	ctx := context.Background()
	pid := s.a.dp.datapathPID()
	if err := s.a.dp.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	nl := s.a.dp.nl
	for _, name := range []string{VXLANName, s.a.wgName} {
		if _, err := nl.LinkByName(name); err == nil {
			t.Errorf("%s left after Remove", name)
		}
	}
	for _, table := range []int{TableEncrypt, TablePlain, TableGuest} {
		rs, err := nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		if err != nil || len(rs) != 0 {
			t.Errorf("table %d after Remove: %v %v", table, rs, err)
		}
	}
	rules, err := nl.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if ourRulePrio(r.Priority) || r.Table == TableEncrypt || r.Table == TablePlain {
			t.Errorf("ip rule left after Remove: %v", r)
		}
	}
	tables, err := s.a.dp.nft.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == NFTTable {
			t.Errorf("nftables table %s left after Remove", tb.Name)
		}
	}
	if pid == 0 && !s.a.kernel {
		t.Fatal("no datapath process before Remove")
	}
	if pid != 0 && !processGone(pid) {
		t.Errorf("datapath process %d still runs after Remove", pid)
	}
	if _, err := os.Stat(filepath.Join(uapiDir, s.a.wgName+".sock")); err == nil {
		t.Errorf("UAPI socket of %s left after Remove", s.a.wgName)
	}
	// Remove twice is fine.
	if err := s.a.dp.Remove(ctx); err != nil {
		t.Fatal(err)
	}
}

// testDatapathThreads reads back the GOMAXPROCS of host h's datapath
// process from the line it logs when it starts (its runtime's own value):
// half the CPUs its runtime saw, at least one (wguser.DefaultProcs), unless
// the environment it inherited sets GOMAXPROCS.
func testDatapathThreads(t *testing.T, h *host) {
	t.Helper()
	b, err := os.ReadFile(h.dp.logFile(h.wgName))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`msg="datapath threads" .*cpus=(\d+) gomaxprocs=(\d+)`).FindAllStringSubmatch(string(b), -1)
	if len(m) == 0 {
		t.Fatalf("the datapath log has no \"datapath threads\" line:\n%s", b)
	}
	last := m[len(m)-1]
	cpus, _ := strconv.Atoi(last[1])
	got, _ := strconv.Atoi(last[2])
	want := wguser.DefaultProcs(cpus)
	if env := os.Getenv("GOMAXPROCS"); env != "" {
		want, _ = strconv.Atoi(env)
	}
	if got != want {
		t.Fatalf("datapath process runs Go code on %d threads (GOMAXPROCS), want %d (its runtime saw %d CPUs)", got, want, cpus)
	}
}
