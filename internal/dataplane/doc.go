// Package dataplane reconciles one host's kernel networking state to a
// compile.HostState: the WireGuard device for encrypted paths, the VXLAN
// device for plain paths, the routing tables and rules that pick one of them
// per (source, destination) pair, and the nftables firewall that enforces the
// policy. Apply reads the kernel state, computes the difference and changes
// only that, so that calling it again with the same state changes nothing and
// an agent restart does not interrupt traffic.
//
// # Kernel objects
//
// Everything we create carries the "cor" prefix:
//
//	corw0 (Config.WireGuardName)  WireGuard device (kernel, or a TUN served by
//	                              wireguard-go in a datapath process)
//	corw0+ (SpareName)            second WireGuard device, only during a key
//	                              rotation (rotation.go), WireGuardPort+1
//	169.254.1.2/32 on both        WireGuardAddr: loose reverse-path
//	                              filtering needs an address on the device
//	corv0                         VXLAN device, VNI compile.VXLANVNI,
//	                              UDP port compile.VXLANPort, no learning
//	table inet corridor           nftables: prerouting (marks), postrouting
//	                              (clears our mark bits on the tunnels), forward,
//	                              guest_out, guest_in and input (firewall)
//	                              chains, raw_prerouting and raw_output
//	                              (notrack of the tunnels' underlay packets
//	                              with known peers, notrack.go), named drop
//	                              counters; prerouting and forward jump a
//	                              guest's, a VXLAN and a WireGuard packet to
//	                              a chain of their kind (prerouting_guest,
//	                              _plain, _encrypt; forward_guest, _plain,
//	                              _encrypt), so that a packet meets only the
//	                              rules that can match it; prerouting_source
//	                              drops a guest's packet with a source not
//	                              its own (see "Reverse-path check")
//	169.254.1.1/32 on corv0       the guests' default gateway (GatewayAddr), so
//	                              the host answers their ARP for it
//	routing tables 5181, 5182     encrypted and plain paths (TableEncrypt,
//	                              TablePlain)
//	routing table 5183            guests' unmarked packets (TableGuest)
//	ip rules 1078-1084            see below
//	nat_prerouting and            nat chains of table inet corridor:
//	nat_postrouting               SNAT of egress (egress.go); DNAT of
//	                              published ports, SNAT of their legs
//	chain ingress                 marks of published ports' connections
//	                              (hook prerouting, after the DNAT)
//	routing table 5184            legs to remote backends (TableIngress)
//	table inet corftprobe         transient: the first Apply adds it with an
//	                              empty flowtable and removes it, to learn
//	                              whether the kernel has flowtables
//	flowtable corflows            in table inet corridor, where the kernel
//	                              has flowtables: established plain flows
//	                              (offloadPlain), made anew with every
//	                              ruleset
//
// # Firewall marks and routing
//
// The path of a packet from a local guest to a remote guest is chosen per
// (source, destination) pair by a mark set in the prerouting chain from
// HostState.Routes, one rule per group of routes with the same sources and
// path ("ip saddr {sources} ip daddr {destinations} meta mark set M": a
// class pair's routes share their sources, so the rules grow with the
// class pairs and the sets with the tasks, not with the task pairs):
//
//	MarkEncrypt 0x01000000 / MarkMask 0x03000000 -> ip rule 1082 -> table 5181
//	MarkPlain   0x02000000 / MarkMask 0x03000000 -> ip rule 1083 -> table 5182
//
// Table 5181 holds one "/32 dev corw0" route per remote guest reached
// encrypted and an unreachable default; table 5182 holds one "/32 dev corv0"
// route per remote guest reached in plain and an unreachable default. A
// marked packet whose destination has no route in its table is therefore
// dropped: it never falls through to the main table and never leaves by the
// other path (fail closed).
//
// Packets arriving on corw0 or corv0 are marked too (MarkEncrypt or
// MarkPlain), and the two devices have src_valid_mark=1, so that strict
// reverse-path filtering looks the source up in the table of the path the
// packet came by, where the remote guest has its route. Rules 1080 (iif
// corw0) and 1081 (iif corv0) send such packets to the main table first
// (with suppress_prefixlength 0, so that a default route never carries them
// away) where the local guests' /32 routes are. The mark of a new connection
// arriving on a tunnel is saved in its conntrack entry (ct mark), and replies
// from the local guest take it back, so that a reply always leaves by the
// path its request came in on.
//
// Egress to named outside destinations (HostState.Outbound) is marked
// MarkEgress 0x03000000 (both MarkMask bits) -> ip rule 1079 -> main
// table; see egress.go, also for why its replies are marked and the
// underlay has src_valid_mark=1 (strict reverse-path filtering).
//
// A published port (HostState.Ingress) is DNATed to a backend chosen by
// a hash of the client's address and port; its connection's ct mark
// carries MarkIngress 0x04000000 (outside MarkMask) with the leg's path,
// and its packets are routed by ip rule 1078 (fwmark MarkIngress) through
// table 5184; see ingress.go.
//
// Rules 1084, one per local guest interface ("iif corgX lookup 5183"),
// catch every packet from a guest that no fwmark rule took: table 5183
// holds a "throw" route per local guest address (the lookup goes on to the
// main table, where the guests' /32 routes are) and an unreachable default.
// They rest on no nftables state: with the ruleset flushed nothing is
// marked, and a guest's packet to a remote guest is unreachable here
// instead of leaving in plain by the main table's default route.
//
// The mark of a guest's new connection to a remote guest is saved in its
// conntrack entry too, so that every connection records its path; the
// forward chain accepts a packet from corw0 or corv0 for a guest only
// when its connection's path is that device's (before the conntrack
// accept, so for every packet: see Firewall).
//
// The tunnel devices route their outer (encapsulated) packets with the
// inner packet's mark, which would send them to our tables where the remote
// underlay address is unreachable: the postrouting chain clears our mark
// bits on packets leaving by corw0 or corv0, after the inner routing
// decision and the forward checks are done.
//
// # Reverse-path check
//
// With policy rules in the namespace, the kernel checks the source of
// every forwarded or delivered packet by a second full route lookup
// (fib_validate_source: a walk of the rules from the local table on), even
// with rp_filter 0, where that lookup only refuses sources that are the
// host's own addresses. The guest interfaces and corv0 therefore have
// accept_local=1: where the effective rp_filter (the larger of "all" and
// the device's) is 0, the kernel skips the lookup; where it is 1 or 2 the
// check is made as before. What the lookup guarded is checked by the
// ruleset instead, once per packet and before anything accepts it:
//
//   - from a guest: the first rule of prerouting_guest drops every IPv4
//     packet whose "iifname . ip saddr" is not a guest of the state with
//     its address (counter spoof; stray on an interface of no guest), for
//     packets to the host as well as forwarded ones, so a guest can send
//     neither as another guest nor as the host (GuardGuestSource,
//     TestDataplane/guest-source);
//   - from corv0: the input chain admits a VXLAN frame only from a known
//     VTEP and with an inner source behind that VTEP (vtep), never one of
//     this host's addresses.
//
// Strict reverse-path filtering where the host has it (rp_filter 1, as in
// the tests) keeps working as described above: src_valid_mark on the
// tunnels makes the lookup use the table of the path. Measured in
// bench/RESULTS.md, "Data path, round 6".
//
// The marks use bits 24 and 25 only, away from those used by kube-proxy
// (0x4000, 0x8000), Calico (0xffff0000 is configurable there) and Tailscale
// (0x00ff0000).
//
// # Firewall
//
// The whole content of table inet corridor is replaced in one nftables batch
// (one netlink transaction): the batch adds the table if missing, flushes the
// rules of all its chains, and adds the new rules; the kernel applies the batch
// atomically, so no packet ever sees a half-built ruleset. This flush inside a
// single transaction is the only flush we do. Address and port lists are
// anonymous sets bound to their rules, so they go away with the flushed rules.
// Named counters survive the replacement, so drop counts are not reset. A
// fingerprint of the desired ruleset is stored as the comment of the first
// forward rule: when it matches (and every chain has the expected number of
// rules) Apply leaves the table alone.
//
// Drop counters (named counter objects, reported by Status):
//
//	pair:<app>:<from>:<to>   traffic of a class pair that has a rule but that
//	                         the rule does not allow: wrong port or protocol,
//	                         or an encrypted pair arriving in plain
//	out:<app>:<class>        new connections from a guest of the class that
//	                         no egress rule allows
//	in:<app>:<class>         new connections to a guest of the class that no
//	                         ingress rule allows
//	spoof                    packets from a guest with another source address
//	path                     guest packets that would leave by the wrong
//	                         device (encrypted mark not on corw0, plain mark
//	                         not on corv0, no mark at all towards a remote)
//	host                     new connections from guests to the host itself
//	invalid                  conntrack-invalid packets to or from guests
//	stray                    guest-facing packets on an interface or with an
//	                         address not of a guest of the state
//	tunnel                   packets from corw0 or corv0 for a connection of
//	                         the other path (an injected VXLAN frame with an
//	                         encrypted connection's 4-tuple) or of none
//	vtep                     VXLAN frames from an underlay address that is no
//	                         VTEP of the state, or whose inner source is not
//	                         a guest behind that VTEP (input chain)
//	tunnel-peer              packets to the WireGuard ports (the device's
//	                         and port+1) from an underlay address that is no
//	                         peer of the state (input chain; notrack.go)
//
// One named counter is no drop counter: allow:<app>:<from>:<to> counts the
// first packet of each connection that the pair's egress rule lets out of
// a local guest (packets of established connections are accepted by
// conntrack before any class-pair rule and are not counted per pair).
//
// Interface names are matched one by one or in concatenations with the
// guest's address ("iifname . ip saddr"): nft 1.0.6 prints the names of
// such sets, where a set of names alone printed as "".
//
// # Repair on notification
//
// Watch (watch.go) applies the last applied state again as soon as the
// kernel notifies a change of links, neighbours, routes, rules or nftables
// in the host's namespace.
//
// # WireGuard without a kernel module
//
// Where the kernel has no WireGuard, corw0 is a TUN device served by
// wireguard-go in a process of its own ("corridor datapath wireguard"), so
// that it survives agent restarts. The process is started inside the host's
// network namespace (all its threads live there), in its own session; its PID
// is kept in <StateDir>/<name>.pid and its output in <StateDir>/<name>.log.
// Apply finds it again through its UAPI socket and starts a new one only when
// it is gone. The UAPI socket directory /var/run/wireguard is shared by the
// whole machine, so several simulated hosts on one machine must use device
// names unique on the machine (Config.WireGuardName, e.g. "corw-<host>");
// we chose unique names over private mount namespaces because wgctrl then
// finds every device without entering any namespace.
package dataplane

// Marks set on guest packets in the prerouting chain; see the package
// documentation.
const (
	MarkEncrypt uint32 = 0x01000000
	MarkPlain   uint32 = 0x02000000
	MarkMask    uint32 = 0x03000000
)

// Routing tables of the two paths.
const (
	TableEncrypt = 5181
	TablePlain   = 5182
	TableGuest   = 5183 // throw per local guest, unreachable default
)

// Priorities of our ip rules.
const (
	RulePrioFromWireGuard = 1080 // iif corw0 lookup main suppress_prefixlength 0
	RulePrioFromVXLAN     = 1081 // iif corv0 lookup main suppress_prefixlength 0
	RulePrioEncrypt       = 1082 // fwmark MarkEncrypt/MarkMask lookup TableEncrypt
	RulePrioPlain         = 1083 // fwmark MarkPlain/MarkMask lookup TablePlain
	RulePrioGuest         = 1084 // iif <guest interface> lookup TableGuest, one per guest
)

// Names of our devices and of the nftables table.
const (
	DefaultWireGuardName = "corw0"
	VXLANName            = "corv0"
	NFTTable             = "corridor"
	// GuestIfPrefix is the prefix of every guest's host-side interface.
	GuestIfPrefix = "corg"
)

// Overheads subtracted from the underlay MTU.
const (
	vxlanOverhead     = 50 // outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
	wireguardOverhead = 80 // outer IPv6 40 + UDP 8 + WireGuard 32 (IPv4 needs 60)

	// TunnelOverhead is the larger of the two paths' overheads: a guest
	// link of the underlay's MTU less this fits either path without
	// fragmenting.
	TunnelOverhead = max(vxlanOverhead, wireguardOverhead)
)
