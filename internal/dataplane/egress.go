package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Egress: a local guest's connection to a destination outside Corridor
// (hoststate.Outbound). The prerouting chain marks its packets MarkEgress
// when source, destination, protocol and port are those of an outbound
// entry (before the pair map, which overrides it for remote guests); ip
// rule RulePrioEgress sends packets with that mark to the main table,
// ahead of the guests' rules to TableGuest, which make everything else
// unreachable: so without nftables nothing is marked and nothing leaves.
// The forward chain drops a packet with the mark that would leave by one
// of our devices (a tunnel or a guest), guest_out lets it through, and
// the nat chain rewrites its source to the host's underlay address.
const (
	// MarkEgress is the third value of the MarkMask bits.
	MarkEgress uint32 = 0x03000000
	// RulePrioEgress: fwmark MarkEgress/MarkMask lookup main.
	RulePrioEgress = 1079
	// chainNATPost is the source NAT chain (type nat, hook postrouting).
	chainNATPost = "nat_postrouting"
	// chainNATPre is the destination NAT chain (type nat, hook prerouting).
	chainNATPre = "nat_prerouting"
)

// natChains are the NAT chains: source NAT of egress in postrouting,
// and a prerouting one that may stay empty: without a nat chain on that
// hook the kernel does not undo the source NAT on replies (their
// destination stays the host's address and they never reach the guest).
func natChains() []*nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return []*nftables.Chain{
		{Name: chainNATPre, Table: corridorTable, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept},
		{Name: chainNATPost, Table: corridorTable, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept},
	}
}

// prefixIs matches the IPv4 destination (or source) against a prefix.
func prefixIs(src bool, p netip.Prefix) match {
	if p.Bits() == 32 {
		return addrIs(src, p.Addr(), expr.CmpOpEq)
	}
	off, word := addrOffset(src)
	b := p.Addr().As4()
	m := netip.PrefixFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), p.Bits()).Masked().Addr().As4()
	return plain(fmt.Sprintf("%s %s", word, p),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m[:], Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b[:]})
}

// egressMarks adds the prerouting rules marking guests' outbound packets
// (every packet of the original direction: each one is routed) and
// recording the mark in the connection (ct mark), and the rule marking
// the replies of those connections that arrive from outside (the
// underlay, never a tunnel or a guest).
//
// The reply mark is what lets a reply pass strict reverse-path
// filtering: de-NATed to the guest's address, the reply is routed to the
// guest's interface, and the kernel checks its source with a reverse
// lookup whose input interface is that guest interface; rule
// RulePrioGuest ("iif corgX lookup TableGuest") answers it, and there the
// outside address is unreachable. With the mark (and src_valid_mark=1 on
// the underlay, so that the lookup carries it) rule RulePrioEgress sends
// the lookup to the main table first, where the outside address is
// reached by the underlay: the reply passes. Nothing else changes:
// unmarked packets from a guest still meet TableGuest.
func (b *rulesetBuilder) egressMarks(d *desired, wgNames []string) {
	if len(d.outbound) == 0 {
		return
	}
	for _, o := range d.outbound {
		for _, dst := range o.Dests {
			// In the guests' dispatch chain: the jump to it matched
			// the input device.
			ms := []match{ctOriginal(), addrSet(true, o.Sources), prefixIs(false, dst.Masked())}
			ms = append(ms, l4(o.Protocol, o.Ports)...)
			b.add(chainPreGuest, append(ms, setMark(MarkEgress, true))...)
		}
	}
	ms := []match{ifMatch(expr.MetaKeyIIFNAME, GuestIfPrefix+"*", expr.CmpOpNeq), ifMatch(expr.MetaKeyIIFNAME, VXLANName, expr.CmpOpNeq)}
	for _, n := range wgNames {
		ms = append(ms, ifMatch(expr.MetaKeyIIFNAME, n, expr.CmpOpNeq))
	}
	ms = append(ms, ctReply(), ctMarkIs(MarkEgress), setMark(MarkEgress, false))
	b.add(chainPrerouting, ms...)
}

// ctMarkIs matches a connection whose recorded path (ct mark) is mark.
func ctMarkIs(mark uint32) match { return ctMarkCmp(expr.CmpOpEq, "==", mark) }

// ctMarkCmp compares a connection's recorded path (ct mark, under
// MarkMask) with mark by op, which nft spells sym.
func ctMarkCmp(op expr.CmpOp, sym string, mark uint32) match {
	return plain(fmt.Sprintf("ct mark & %#x %s %#x", MarkMask, sym, mark),
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MarkMask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)})
}

// egressSysctls: src_valid_mark on the underlay, so that the reverse-path
// check of an egress reply uses its mark (see egressMarks), and that of a
// client's packet to a published port (ingress.go: forwarded to a local
// backend, the check looks the client up as if it came from the guest
// interface, where rule RulePrioGuest would refuse it; with the mark,
// rules RulePrioIngress and RulePrioEgress answer from the main table).
func egressSysctls(d *desired, underlay string) []sysctl {
	if len(d.outbound) == 0 && len(d.ingress) == 0 {
		return nil
	}
	return []sysctl{{Key: "net/ipv4/conf/" + underlay + "/src_valid_mark", Value: "1"}}
}

// egressForward drops a guest's packet marked for egress that would
// leave by one of our devices: egress leaves by the underlay only.
func (b *rulesetBuilder) egressForward(d *desired) {
	if len(d.outbound) == 0 {
		return
	}
	// By prefix: the WireGuard devices are named corw0 or corw<suffix>
	// (Config.WireGuardName), the VXLAN device corv0, guests corg*. (Not
	// "cor*": an underlay device may carry the prefix too, as in tests.)
	for _, dev := range []string{"corw*", "corv*", GuestIfPrefix + "*"} {
		b.add(chainForward, ifMatch(expr.MetaKeyIIFNAME, GuestIfPrefix+"*", expr.CmpOpEq), markIs(MarkEgress),
			ifMatch(expr.MetaKeyOIFNAME, dev, expr.CmpOpEq), b.count(DropPath), drop)
	}
}

// egressAllow lets marked outbound packets through guest_out.
func (b *rulesetBuilder) egressAllow(d *desired) {
	for _, o := range d.outbound {
		for _, dst := range o.Dests {
			ms := []match{markIs(MarkEgress), addrSet(true, o.Sources), prefixIs(false, dst.Masked())}
			ms = append(ms, l4(o.Protocol, o.Ports)...)
			b.add(chainGuestOut, append(ms, ret)...)
		}
	}
}

// egressNAT rewrites the source of egress to the host's underlay address
// (masquerade when the underlay is IPv6: the outgoing device's IPv4
// address).
func (b *rulesetBuilder) egressNAT(d *desired) {
	if len(d.outbound) == 0 || guardOff(GuardEgressSNAT) {
		return
	}
	mark := markIs(MarkEgress)
	if d.underlay.Is4() {
		a := d.underlay.As4()
		b.add(chainNATPost, mark, plain("snat ip to "+d.underlay.String(),
			&expr.Immediate{Register: 1, Data: a[:]},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1}))
		return
	}
	b.add(chainNATPost, ipv4Only(), mark, plain("masquerade", &expr.Masq{}))
}

// egressRule is the ip rule that takes marked egress to the main table,
// ahead of the guests' rules to TableGuest; none without guests or
// ingress (whose packets it routes too, ingress.go).
func egressRule(guests []guestIf, ingress bool) []*netlink.Rule {
	if len(guests) == 0 && !ingress {
		return nil
	}
	mask := MarkMask
	r := netlink.NewRule()
	r.Family = netlink.FAMILY_V4
	r.Priority = RulePrioEgress
	r.Mark, r.Mask, r.Table = MarkEgress, &mask, unix.RT_TABLE_MAIN
	return []*netlink.Rule{r}
}
