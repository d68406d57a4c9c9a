package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/corridor-dev/corridor/internal/compile"
)

func a(s string) netip.Addr { return netip.MustParseAddr(s) }

func validState(t *testing.T) compile.HostState {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return compile.HostState{
		Host: "a", Address: a("198.18.0.1"), VTEPMAC: "02:00:00:00:00:01", WireGuardPort: 51820,
		Guests: []compile.Guest{{App: "shop", Class: "web", Address: a("100.64.0.1"), HostIf: "corg1"}},
		Peers: []compile.Peer{{Server: "b", PublicKey: k.PublicKey().String(), Endpoint: netip.MustParseAddrPort("198.18.0.2:51820"),
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.1.1/32")}}},
		VXLAN:  []compile.VXLANEntry{{Server: "b", Underlay: a("198.18.0.2"), MAC: "02:00:00:00:00:02", Guests: []netip.Addr{a("100.64.1.2")}}},
		Routes: []compile.Route{{Sources: []netip.Addr{a("100.64.0.1")}, Dest: a("100.64.1.1"), Encrypt: true}},
		Firewall: []compile.FirewallRule{{App: "shop", FromClass: "web", ToClass: "db", Direction: compile.Egress,
			Sources: []netip.Addr{a("100.64.0.1")}, Dests: []netip.Addr{a("100.64.1.1")}, Protocol: "tcp", Ports: []int{5432}, Encrypt: true}},
	}
}

func TestBuildDesiredRejectsBadState(t *testing.T) {
	cases := []struct {
		field string
		edit  func(*compile.HostState)
	}{
		{"vtepMAC", func(s *compile.HostState) { s.VTEPMAC = "zz" }},
		{"vtepMAC", func(s *compile.HostState) { s.VTEPMAC = "01:00:00:00:00:01" }},
		{"address", func(s *compile.HostState) { s.Address = netip.Addr{} }},
		{"wireguardPort", func(s *compile.HostState) { s.WireGuardPort = 70000 }},
		{"guests[0].hostIf", func(s *compile.HostState) { s.Guests[0].HostIf = "eth0" }},
		{"guests[0].address", func(s *compile.HostState) { s.Guests[0].Address = a("fd00::1") }},
		{"peers[0].publicKey", func(s *compile.HostState) { s.Peers[0].PublicKey = "nope" }},
		{"peers[0].endpoint", func(s *compile.HostState) { s.Peers[0].Endpoint = netip.AddrPort{} }},
		{"vxlan[0].mac", func(s *compile.HostState) { s.VXLAN[0].MAC = "" }},
		{"vxlan[0].underlay", func(s *compile.HostState) { s.VXLAN[0].Underlay = a("fd00::2") }},
		{"routes[0].dest", func(s *compile.HostState) { s.Routes[0].Dest = netip.Addr{} }},
		{"routes[1].sources[0]", func(s *compile.HostState) {
			s.Routes = append(s.Routes, compile.Route{Sources: []netip.Addr{a("100.64.0.1")}, Dest: a("100.64.1.1"), Encrypt: false})
		}},
		{"firewall[0].direction", func(s *compile.HostState) { s.Firewall[0].Direction = "sideways" }},
		{"firewall[0].protocol", func(s *compile.HostState) { s.Firewall[0].Protocol = "icmp" }},
		{"firewall[0].ports[0]", func(s *compile.HostState) { s.Firewall[0].Ports = []int{0} }},
		{"firewall[0].app", func(s *compile.HostState) { s.Firewall[0].App = "a:b" }},
	}
	for _, c := range cases {
		st := validState(t)
		c.edit(&st)
		_, err := buildDesired(st)
		if !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), c.field+":") {
			t.Errorf("%s: got %v, want an ErrInvalidState naming %s", c.field, err, c.field)
		}
	}
	if _, err := buildDesired(validState(t)); err != nil {
		t.Fatalf("valid state refused: %v", err)
	}
}

func TestRulesetDeterministicAndComplete(t *testing.T) {
	st := validState(t)
	d1, err := buildDesired(st)
	if err != nil {
		t.Fatal(err)
	}
	// The same state in another order gives the same ruleset.
	st.Guests = append(st.Guests, compile.Guest{App: "shop", Class: "db", Address: a("100.64.0.9"), HostIf: "corg0"})
	d2, _ := buildDesired(st)
	st.Guests[0], st.Guests[1] = st.Guests[1], st.Guests[0]
	d3, _ := buildDesired(st)
	r1, r2, r3 := buildRuleset(d1, "corw0"), buildRuleset(d2, "corw0"), buildRuleset(d3, "corw0")
	if r2.hash != r3.hash || r2.text() != r3.text() {
		t.Fatalf("order of guests changes the ruleset:\n%s\n%s", r2.text(), r3.text())
	}
	if r1.hash == r2.hash {
		t.Fatal("a new guest does not change the fingerprint")
	}
	if buildRuleset(d1, "corw-x").hash == r1.hash {
		t.Fatal("the WireGuard device name does not change the fingerprint")
	}
	text := r1.text()
	for _, want := range []string{
		`iifname "corg1" ip saddr != 100.64.0.1`,
		`ip saddr {100.64.0.1} ip daddr {100.64.1.1} meta l4proto tcp th dport {5432} counter name "allow:shop:web:db" return`,
		`counter name "pair:shop:web:db" drop`,
		`counter name "out:shop:web" drop`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, text)
		}
	}
	if m := pairMark(text, "100.64.0.1", "100.64.1.1"); m != markHex(MarkEncrypt) {
		t.Errorf("mark of 100.64.0.1 -> 100.64.1.1: %q, want %s", m, markHex(MarkEncrypt))
	}
	counts := r1.ruleCount()
	if counts[chainGuestIn] == 0 || counts[chainForward] == 0 || counts[chainPrerouting] == 0 {
		t.Fatalf("rule counts %v", counts)
	}
	// Every chain of the table is counted, the empty ones too: the NAT
	// chains of a state without egress hold no rule, and firewallCurrent
	// must find them empty.
	for _, c := range chains() {
		if _, ok := counts[c.Name]; !ok {
			t.Errorf("rule counts lack chain %s: %v", c.Name, counts)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	k1, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(dir)
	if err != nil || k2 != k1 {
		t.Fatalf("second load: %v, same key %v", err, k2 == k1)
	}
	if err := os.Chmod(filepath.Join(dir, KeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key accepted: %v", err)
	}
	if _, err := LoadOrCreateKey(""); err == nil {
		t.Fatal("empty dir accepted")
	}
}

// countOpen counts the open TCP connections whose reply comes from a held
// address (the task behind a DNAT too), and nothing else: not one that is
// closing for good, not UDP, not one from the task.
func TestCountOpen(t *testing.T) {
	held := netip.MustParseAddr("100.64.0.5")
	ip := func(s string) net.IP { return net.ParseIP(s).To4() }
	flow := func(proto uint8, state uint8, src, dst, replySrc string) *netlink.ConntrackFlow {
		f := &netlink.ConntrackFlow{}
		f.Forward.Protocol, f.Forward.SrcIP, f.Forward.DstIP = proto, ip(src), ip(dst)
		f.Reverse.Protocol, f.Reverse.SrcIP, f.Reverse.DstIP = proto, ip(replySrc), ip(src)
		if proto == unix.IPPROTO_TCP {
			f.ProtoInfo = &netlink.ProtoInfoTCP{State: state}
		}
		return f
	}
	flows := []*netlink.ConntrackFlow{
		flow(unix.IPPROTO_TCP, tcpEstab, "100.64.0.9", "100.64.0.5", "100.64.0.5"),     // counted
		flow(unix.IPPROTO_TCP, tcpSynSent, "100.64.0.9", "100.64.0.5", "100.64.0.5"),   // counted
		flow(unix.IPPROTO_TCP, tcpFinWait, "203.0.113.10", "198.18.0.1", "100.64.0.5"), // counted: DNAT to it
		flow(unix.IPPROTO_TCP, 7, "100.64.0.9", "100.64.0.5", "100.64.0.5"),            // TIME_WAIT
		flow(unix.IPPROTO_TCP, 8, "100.64.0.9", "100.64.0.5", "100.64.0.5"),            // CLOSE
		flow(unix.IPPROTO_UDP, 0, "100.64.0.9", "100.64.0.5", "100.64.0.5"),            // UDP
		flow(unix.IPPROTO_TCP, tcpEstab, "100.64.0.5", "100.64.0.9", "100.64.0.9"),     // from it
		flow(unix.IPPROTO_TCP, tcpEstab, "100.64.0.9", "100.64.0.6", "100.64.0.6"),     // another task
	}
	if n := countOpen(flows, []netip.Addr{held}); n != 3 {
		t.Errorf("countOpen = %d, want 3", n)
	}
	// Two tasks moving together: the connection between them is theirs.
	if n := countOpen(flows, []netip.Addr{held, netip.MustParseAddr("100.64.0.9")}); n != 0+1 {
		t.Errorf("countOpen with the client moving too = %d, want 1 (the DNAT one)", n)
	}
	if n := countOpen(flows, nil); n != 0 {
		t.Errorf("countOpen of nothing held = %d, want 0", n)
	}
}

// A held address gets a rule that drops new TCP connections to it, before
// the conntrack accept, and the rule goes when the hold does.
func TestRulesetHolds(t *testing.T) {
	st := validState(t)
	st.Schema, st.Hold = "1.4", []netip.Addr{a("100.64.1.1")}
	d, err := buildDesired(st)
	if err != nil {
		t.Fatal(err)
	}
	text := buildRuleset(d, "corw0").text()
	rule := `ip daddr {100.64.1.1} ip saddr != {100.64.1.1} iifname != "corw0" iifname != "corw0+" iifname != "corv0" meta l4proto tcp ct state new counter name "hold" drop`
	hold, est := strings.Index(text, rule), strings.Index(text, "ct state established,related accept")
	if hold < 0 || est < 0 || hold > est {
		t.Fatalf("ruleset lacks %q before the conntrack accept:\n%s", rule, text)
	}
	st.Hold = nil
	d, _ = buildDesired(st)
	if text := buildRuleset(d, "corw0").text(); strings.Contains(text, `"hold"`) {
		t.Fatalf("hold rule left without a hold:\n%s", text)
	}
}

// connsOf matches a moved task's connections whichever side it is on, and
// none of another task's.
func TestConnsOfMatches(t *testing.T) {
	f := func(src, dst, replySrc string) *netlink.ConntrackFlow {
		fl := &netlink.ConntrackFlow{}
		fl.Forward.SrcIP, fl.Forward.DstIP, fl.Reverse.SrcIP = net.ParseIP(src).To4(), net.ParseIP(dst).To4(), net.ParseIP(replySrc).To4()
		return fl
	}
	m := connsOf{a("100.64.0.5")}
	for _, c := range []struct {
		fl   *netlink.ConntrackFlow
		want bool
	}{
		{f("100.64.0.9", "100.64.0.5", "100.64.0.5"), true},
		{f("203.0.113.10", "198.18.0.1", "100.64.0.5"), true}, // DNAT to it
		{f("100.64.0.5", "100.64.0.9", "100.64.0.9"), true},   // from it
		{f("100.64.0.9", "100.64.0.6", "100.64.0.6"), false},
	} {
		if got := m.MatchConntrackFlow(c.fl); got != c.want {
			t.Errorf("%v -> %v: match %v, want %v", c.fl.Forward.SrcIP, c.fl.Forward.DstIP, got, c.want)
		}
	}
}

// pairMark is the mark the prerouting chain of text (ruleset.text) gives
// a new packet from guest src to dst, or "" if none: the mark rules (in
// the guests' dispatch chain) read
// "ct direction original ... ip saddr {S} ip daddr {D} meta mark set M".
func pairMark(text, src, dst string) string {
	set := func(l, word string) []string {
		i := strings.Index(l, word+" {")
		if i < 0 {
			return nil
		}
		rest := l[i+len(word)+2:]
		return strings.Split(rest[:strings.Index(rest, "}")], ",")
	}
	mark := ""
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, chainPreGuest+": ") || !strings.Contains(l, "ct direction original") {
			continue
		}
		i := strings.Index(l, "meta mark set ")
		if i < 0 || !slices.Contains(set(l, "ip saddr"), src) || !slices.Contains(set(l, "ip daddr"), dst) {
			continue
		}
		mark = l[i+len("meta mark set "):] // the last rule that matches wins
	}
	return mark
}

// The marks of a host's routes come in groups of sources and destinations
// (one rule per class pair and path), not one element per pair: each pair
// gets its route's mark, a pair of no route none, and a class pair of many
// tasks gives one rule of two sets, linear in the tasks.
func TestMarksGrouped(t *testing.T) {
	// web in 100.64.0.1-250 and 100.64.3.1-50, db in 100.64.1.x and 4.x.
	addr := func(third byte, i int) netip.Addr {
		return netip.AddrFrom4([4]byte{100, 64, third + 3*byte(i/250), byte(i%250 + 1)})
	}
	var web, db []netip.Addr
	for i := range 300 {
		web, db = append(web, addr(0, i)), append(db, addr(1, i))
	}
	cache := []netip.Addr{a("100.64.2.1"), a("100.64.2.2")}
	var routes []compile.Route
	for _, d := range db {
		routes = append(routes, compile.Route{Sources: web, Dest: d, Server: "b", Encrypt: true})
	}
	for _, d := range cache {
		routes = append(routes, compile.Route{Sources: web[:1], Dest: d, Server: "b"})
	}
	groups := groupMarks(slices.Values(routes))
	if len(groups) != 2 {
		t.Fatalf("%d groups, want 2 (web->db encrypted, web/0->cache plain)", len(groups))
	}
	if g := groups[0]; len(g.srcs) != 300 || len(g.dsts) != 300 || g.mark != MarkEncrypt {
		t.Fatalf("first group: %d sources, %d destinations, mark %#x", len(g.srcs), len(g.dsts), g.mark)
	}
	d := &desired{marks: groups}
	text := buildRuleset(d, "corw0").text()
	for _, c := range []struct{ src, dst, want string }{
		{"100.64.0.7", "100.64.4.50", markHex(MarkEncrypt)},
		{"100.64.3.50", "100.64.1.1", markHex(MarkEncrypt)},
		{"100.64.0.1", "100.64.2.2", markHex(MarkPlain)},
		{"100.64.0.2", "100.64.2.2", ""}, // web/1 has no route to cache
		{"100.64.1.1", "100.64.0.1", ""}, // no route that way
	} {
		if got := pairMark(text, c.src, c.dst); got != c.want {
			t.Errorf("mark of %s -> %s: %q, want %q", c.src, c.dst, got, c.want)
		}
	}
}

// The agent's --wireguard-procs reaches the datapath process as --procs;
// 0 leaves the process its default.
func TestDatapathArgsProcs(t *testing.T) {
	for _, c := range []struct {
		procs int
		want  string
	}{
		{0, "datapath wireguard --name corw0 --mtu 1420"},
		{3, "datapath wireguard --name corw0 --mtu 1420 --procs 3"},
	} {
		dp := &Dataplane{cfg: Config{Procs: c.procs}}
		if got := strings.Join(dp.datapathArgs("corw0", 1420), " "); got != c.want {
			t.Errorf("Procs %d: %q, want %q", c.procs, got, c.want)
		}
	}
}

// Dispatch (issue 19): the prerouting and forward chains hand a packet
// from a guest or a tunnel to the chain of its input device's kind, so
// that a packet meets only the rules that can match it. The main chains
// hold jumps (and the rules of underlay packets); the dispatch chains
// match no input device (their jump did); the prerouting ones end with
// accept, so a guest's or a tunnel's packet leaves the chain there.
func TestRulesetDispatch(t *testing.T) {
	d, err := buildDesired(validState(t))
	if err != nil {
		t.Fatal(err)
	}
	rs := buildRuleset(d, "corw0")
	last := map[string]string{}
	sawAccept := false
	for _, r := range rs.rules {
		last[r.chain] = r.desc
		switch r.chain {
		case chainPrerouting:
			if !strings.HasSuffix(r.desc, " jump "+chainPreGuest) && !strings.HasSuffix(r.desc, " jump "+chainPrePlain) &&
				!strings.HasSuffix(r.desc, " jump "+chainPreEnc) {
				t.Errorf("prerouting rule is no dispatch jump: %s", r.desc)
			}
		case chainForward:
			if r.desc == "ct state established,related accept" {
				sawAccept = true
			}
			if !sawAccept && !strings.Contains(r.desc, "jump ") {
				t.Errorf("forward rule before the conntrack accept is no dispatch jump: %s", r.desc)
			}
		case chainPreGuest, chainPrePlain, chainPreEnc, chainFwdGuest, chainFwdPlain, chainFwdEnc:
			// The guest's source check pairs the interface with its
			// guest's address (guestSource): it is no dispatch.
			if strings.Contains(r.desc, "iifname") && !strings.HasSuffix(r.desc, " jump "+chainPreSource) {
				t.Errorf("%s matches the input device again: %s", r.chain, r.desc)
			}
		}
	}
	if !sawAccept {
		t.Fatal("forward has no conntrack accept")
	}
	for _, c := range []string{chainPreGuest, chainPrePlain, chainPreEnc} {
		if !strings.HasSuffix(last[c], "accept") {
			t.Errorf("%s does not end with accept: %q", c, last[c])
		}
	}
	n := rs.ruleCount()
	// One jump for the guests and one per tunnel device (corv0, corw0 and
	// its rotation spare).
	if n[chainPrerouting] != 4 {
		t.Errorf("prerouting has %d rules, want 4 (the dispatch jumps):\n%s", n[chainPrerouting], rs.text())
	}
}

// The source check of a guest's packet (guestSource) is the first rule a
// guest's packet meets in prerouting, before any accept: the guest
// interfaces skip the kernel's reverse-path lookup (accept_local=1), so
// this rule is what keeps a guest from sending as another guest or as
// the host, for packets to the host too. A failing packet is counted as
// spoof on a guest interface of the state and as stray on another one.
func TestRulesetGuestSource(t *testing.T) {
	d, err := buildDesired(validState(t))
	if err != nil {
		t.Fatal(err)
	}
	rs := buildRuleset(d, "corw0")
	var pre, src []string
	for _, r := range rs.rules {
		switch r.chain {
		case chainPreGuest:
			pre = append(pre, r.desc)
		case chainPreSource:
			src = append(src, r.desc)
		}
	}
	if len(d.guests) == 0 {
		t.Fatal("the test state has no guests")
	}
	var elems []string
	for _, g := range d.guests {
		elems = append(elems, fmt.Sprintf("%s . %s", g.name, g.addr))
	}
	want := "meta nfproto ipv4 iifname . ip saddr != {" + strings.Join(elems, ", ") + "} jump " + chainPreSource
	if len(pre) == 0 || pre[0] != want {
		t.Fatalf("first prerouting_guest rule:\n got %q\nwant %q\nruleset:\n%s", pre, want, rs.text())
	}
	var wantSrc []string
	for _, g := range d.guests {
		wantSrc = append(wantSrc, fmt.Sprintf(`iifname "%s" counter name "spoof" drop`, g.name))
	}
	wantSrc = append(wantSrc, `counter name "stray" drop`)
	if !slices.Equal(src, wantSrc) {
		t.Errorf("prerouting_source:\n got %q\nwant %q", src, wantSrc)
	}

	// No guest at all: every IPv4 packet from a guest interface is stray.
	d.guests = nil
	rs = buildRuleset(d, "corw0")
	var first string
	var srcN []string
	for _, r := range rs.rules {
		if r.chain == chainPreGuest && first == "" {
			first = r.desc
		}
		if r.chain == chainPreSource {
			srcN = append(srcN, r.desc)
		}
	}
	if first != "meta nfproto ipv4 jump "+chainPreSource || !slices.Equal(srcN, []string{`counter name "stray" drop`}) {
		t.Errorf("without guests: first prerouting_guest rule %q, prerouting_source %q", first, srcN)
	}
}

// With offload, the forward chain hands established plain connections
// between a guest and corv0 (both ways), not a published port's, to the
// flowtable, on a packet of their original direction, after every check
// and just before the conntrack accept; nothing else is offloaded, and
// without offload there is no such rule (nor a flowtable to make).
func TestRulesetOffload(t *testing.T) {
	d, err := buildDesired(validState(t))
	if err != nil {
		t.Fatal(err)
	}
	off := buildRuleset(d, "corw0")
	if off.offload || strings.Contains(off.text(), "flow add") {
		t.Fatalf("offload rules without offload:\n%s", off.text())
	}
	d.offload = true
	on := buildRuleset(d, "corw0")
	if !on.offload {
		t.Fatal("ruleset with offload does not ask for the flowtable")
	}
	if on.hash == off.hash {
		t.Fatal("the fingerprint does not tell offload from none: an agent switching would keep the old ruleset")
	}
	var fwd []string
	for _, r := range on.rules {
		if r.chain == chainForward {
			fwd = append(fwd, r.desc)
		}
	}
	est := slices.Index(fwd, "ct state established,related accept")
	want := []string{
		`ct state established ct direction original ct mark & 0x7000000 == 0x2000000 iifname "corg*" oifname "corv0" flow add @corflows`,
		`ct state established ct direction original ct mark & 0x7000000 == 0x2000000 iifname "corv0" oifname "corg*" flow add @corflows`,
	}
	if est < 2 || !slices.Equal(fwd[est-2:est], want) {
		t.Fatalf("forward chain: want, just before the conntrack accept,\n%s\ngot:\n%s", strings.Join(want, "\n"), strings.Join(fwd, "\n"))
	}
	for _, r := range on.rules {
		if strings.Contains(r.desc, "flow add") && !slices.Contains(want, r.desc) {
			t.Errorf("unexpected offload rule in %s: %s", r.chain, r.desc)
		}
	}
	// Every check of the forward chain that can drop comes before them.
	for i, r := range fwd {
		if i > est && strings.Contains(r, "jump "+chainFwdGuest) {
			t.Errorf("path checks after the offload rules: %s", r)
		}
	}
}
