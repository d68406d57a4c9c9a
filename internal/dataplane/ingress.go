package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/corridor-dev/corridor/internal/hoststate"
)

// Ingress: clients outside Corridor reach a published port
// (hoststate.IngressEntry) on this entry host.
//
//   - nat_prerouting DNATs a new connection from an allowed client to the
//     published address and port to one backend, chosen by
//     "jhash ip saddr . th sport mod N" in a map of the backends' addresses
//     (to the class port); anything else to the published address and port
//     is dropped there (counted as client:<app>:<class>).
//   - The chain ingress (hook prerouting, after the DNAT) records the
//     connection's leg in its ct mark: MarkIngress with MarkEncrypt or
//     MarkPlain for a backend on another host, with MarkEgress for one on
//     this host; and marks every packet of it from outside, and every
//     reply arriving by a tunnel, MarkIngress|MarkEgress.
//   - ip rule RulePrioIngress sends packets with MarkIngress to table
//     TableIngress: one /32 route per remote backend by the device of its
//     leg (corw0 or corv0), then "throw" for everything else, which goes on
//     to rule RulePrioEgress (the main table, where the clients and the
//     local guests are). The same table answers the reverse-path check of
//     a reply arriving by a tunnel (its source is a remote backend, routed
//     by that tunnel here): strict reverse-path filtering holds.
//   - nat_postrouting rewrites the source of a leg to a remote backend to
//     the entry's Source, this host's address in the app's network, which
//     the backend's host routes back by the same path (the compiler lists
//     it as a remote guest of this host there). A local backend sees the
//     client's own address.
//   - The forward chain lets the replies of a leg from a tunnel out to the
//     client (the tunnel's ct mark with MarkIngress) before it drops
//     anything else from a tunnel that is not for a guest; guest_in
//     accepts a connection to a local backend from its allowed clients.
const (
	// MarkIngress is the bit of an ingress connection's mark (ct mark and
	// packet), outside MarkMask.
	MarkIngress uint32 = 0x04000000
	// TableIngress holds the legs to remote backends.
	TableIngress = 5184
	// RulePrioIngress: fwmark MarkIngress/MarkIngress lookup TableIngress.
	RulePrioIngress = 1078
	// chainIngress is the ingress mark chain (filter, hook prerouting,
	// after the DNAT).
	chainIngress = "ingress"
	// DropClient counts packets to a published port from a client not
	// allowed ("client:<app>:<class>").
	DropClient = "client"
	// ingressHashSeed seeds jhash: any constant, the same on every host.
	ingressHashSeed = 0x636f7272
)

// ingressChain is chainIngress: after nat_prerouting (the DNAT), before
// the routing decision.
func ingressChain() *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: chainIngress, Table: corridorTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest + 10), Policy: &accept}
}

// fromOutside matches packets that arrived by neither a guest nor a
// tunnel.
func fromOutside(wgNames []string) []match {
	ms := []match{ifMatch(expr.MetaKeyIIFNAME, GuestIfPrefix+"*", expr.CmpOpNeq), ifMatch(expr.MetaKeyIIFNAME, VXLANName, expr.CmpOpNeq)}
	for _, n := range wgNames {
		ms = append(ms, ifMatch(expr.MetaKeyIIFNAME, n, expr.CmpOpNeq))
	}
	return ms
}

// backendsBy splits an entry's backends: local, remote encrypted, remote
// plain.
func backendsBy(in hoststate.IngressEntry) (local, enc, plain []netip.Addr) {
	for _, b := range in.Backends {
		a := b.Address.Unmap()
		switch {
		case b.Local:
			local = append(local, a)
		case b.Encrypt:
			enc = append(enc, a)
		default:
			plain = append(plain, a)
		}
	}
	return local, enc, plain
}

// ingressDNAT adds the DNAT (and the drop of other clients) of every
// entry to nat_prerouting.
func (b *rulesetBuilder) ingressDNAT(d *desired, wgNames []string) {
	for _, in := range d.ingress {
		base := append(fromOutside(wgNames), addrIs(false, in.Address.Unmap(), expr.CmpOpEq))
		base = append(base, l4(in.Protocol, []int{in.Port})...)
		var clients []netip.Prefix
		for _, c := range in.Clients {
			clients = append(clients, c.Masked())
		}
		if len(in.Backends) > 0 {
			b.add(chainNATPre, append(append(base, prefixSet(true, clients)), dnatHash(in))...)
		}
		b.add(chainNATPre, append(base, b.count(counterName(DropClient, in.App, in.Class)), drop)...)
	}
}

// ingressMarks fills chainIngress.
func (b *rulesetBuilder) ingressMarks(d *desired, wgNames []string) {
	if len(d.ingress) == 0 {
		return
	}
	out := fromOutside(wgNames)
	for _, in := range d.ingress {
		local, enc, plain := backendsBy(in)
		for _, set := range []struct {
			addrs []netip.Addr
			mark  uint32
		}{{enc, MarkEncrypt}, {plain, MarkPlain}, {local, MarkEgress}} {
			if len(set.addrs) == 0 {
				continue
			}
			ms := append(append([]match{}, out...), ctState(expr.CtStateBitNEW, "new", false), ctStatusDNAT(),
				addrSet(false, set.addrs))
			ms = append(ms, l4(in.Protocol, []int{in.ToPort})...)
			b.add(chainIngress, append(ms, setCtMark(set.mark|MarkIngress))...)
		}
	}
	b.add(chainIngress, append(append([]match{}, out...), ctOriginal(), ctMarkHas(MarkIngress), setMark(MarkIngress|MarkEgress, false))...)
	for _, dev := range append([]string{VXLANName}, wgNames...) {
		b.add(chainIngress, ifMatch(expr.MetaKeyIIFNAME, dev, expr.CmpOpEq), ctReply(), ctMarkHas(MarkIngress), setMark(MarkIngress|MarkEgress, false))
	}
}

// ingressForward lets the replies of legs to remote backends out of the
// tunnel they came by (to the client): a tunnel's packet otherwise only
// reaches a guest. The connection's ct mark says the tunnel.
func (b *rulesetBuilder) ingressForward(d *desired, chain string, mark uint32) {
	if len(d.ingress) == 0 {
		return
	}
	// chain is the forward dispatch chain of the tunnels of mark's path:
	// the input device is matched by the jump to it.
	b.add(chain, ctReply(), ctMarkMasked(MarkMask|MarkIngress, mark|MarkIngress),
		ifMatch(expr.MetaKeyOIFNAME, GuestIfPrefix+"*", expr.CmpOpNeq), accept)
}

// ingressAllow accepts, in guest_in, a connection to a local backend from
// the entry's clients, come through its DNAT.
func (b *rulesetBuilder) ingressAllow(d *desired) {
	for _, in := range d.ingress {
		local, _, _ := backendsBy(in)
		if len(local) == 0 {
			continue
		}
		var clients []netip.Prefix
		for _, c := range in.Clients {
			clients = append(clients, c.Masked())
		}
		ms := []match{ctMarkMasked(MarkMask|MarkIngress, MarkEgress|MarkIngress), prefixSet(true, clients), addrSet(false, local)}
		ms = append(ms, l4(in.Protocol, []int{in.ToPort})...)
		b.add(chainGuestIn, append(ms, accept)...)
	}
}

// ingressSNAT rewrites the source of a leg to a remote backend to the
// entry's Source.
func (b *rulesetBuilder) ingressSNAT(d *desired) {
	if guardOff(GuardIngressSNAT) {
		return
	}
	for _, in := range d.ingress {
		_, enc, pl := backendsBy(in)
		remote := append(enc, pl...)
		if len(remote) == 0 {
			continue
		}
		src := in.Source.Unmap().As4()
		ms := []match{ctMarkHas(MarkIngress), addrSet(false, remote)}
		ms = append(ms, l4(in.Protocol, []int{in.ToPort})...)
		b.add(chainNATPost, append(ms, plain("snat ip to "+in.Source.Unmap().String(),
			&expr.Immediate{Register: 1, Data: src[:]},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1}))...)
	}
}

// dnatHash is "dnat ip to jhash ip saddr . th sport mod N seed S map
// { 0 : backend0, ... } : port".
func dnatHash(in hoststate.IngressEntry) match {
	// The keys are the hash's result, a host-order 32-bit integer: nft
	// lists them byte-swapped on a little-endian host (1 as 16777216),
	// since an anonymous set's keys are taken as big-endian for printing.
	s := &anonSet{set: nftables.Set{Anonymous: true, Constant: true, IsMap: true,
		KeyType: nftables.TypeInteger, DataType: nftables.TypeIPAddr}}
	var ds []string
	for i, bk := range in.Backends {
		a := bk.Address.Unmap().As4()
		s.elems = append(s.elems, nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)), Val: a[:]})
		ds = append(ds, fmt.Sprintf("%d : %s", i, bk.Address.Unmap()))
	}
	n := uint32(len(in.Backends))
	return match{
		desc: fmt.Sprintf("dnat ip to jhash ip saddr . th sport mod %d seed %#x map {%s} : %d", n, ingressHashSeed, strings.Join(ds, ", "), in.ToPort),
		set:  s,
		exprs: func(set *nftables.Set) []expr.Any {
			return []expr.Any{
				// The source address and port in two consecutive 32-bit
				// registers (the port zero-padded): 8 bytes of key.
				&expr.Payload{DestRegister: unix.NFT_REG32_00, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
				&expr.Payload{DestRegister: unix.NFT_REG32_01, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
				&expr.Hash{SourceRegister: unix.NFT_REG32_00, DestRegister: 1, Length: 8, Modulus: n, Seed: ingressHashSeed, Type: expr.HashTypeJenkins},
				&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
				&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(in.ToPort))},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
			}
		},
	}
}

// prefixSet matches the source (or destination) against a set of IPv4
// prefixes (an interval set).
func prefixSet(src bool, ps []netip.Prefix) match {
	off, word := addrOffset(src)
	s := &anonSet{set: nftables.Set{Anonymous: true, Constant: true, Interval: true, KeyType: nftables.TypeIPAddr}}
	var ds []string
	// An interval set holds each prefix as [start, end+1), closed by an
	// IntervalEnd element; 0.0.0.0 opens it as a gap.
	s.elems = append(s.elems, nftables.SetElement{Key: []byte{0, 0, 0, 0}, IntervalEnd: true})
	for _, p := range mergePrefixes(ps) {
		start := p.Addr().As4()
		s.elems = append(s.elems, nftables.SetElement{Key: start[:]})
		if end, ok := afterPrefix(p); ok {
			e := end.As4()
			s.elems = append(s.elems, nftables.SetElement{Key: e[:], IntervalEnd: true})
		}
		ds = append(ds, p.String())
	}
	return match{
		desc: fmt.Sprintf("%s {%s}", word, strings.Join(ds, ",")),
		set:  s,
		exprs: func(set *nftables.Set) []expr.Any {
			return []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
				&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
			}
		},
	}
}

// mergePrefixes sorts ps and drops those inside another: an interval
// set's ranges must not overlap.
func mergePrefixes(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	sorted := append([]netip.Prefix(nil), ps...)
	for i := 1; i < len(sorted); i++ {
		for j := i; j > 0 && (sorted[j].Addr().Less(sorted[j-1].Addr()) ||
			(sorted[j].Addr() == sorted[j-1].Addr() && sorted[j].Bits() < sorted[j-1].Bits())); j-- {
			sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
		}
	}
	for _, p := range sorted {
		if len(out) > 0 && out[len(out)-1].Contains(p.Addr()) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// afterPrefix is the first address after p; false past 255.255.255.255.
func afterPrefix(p netip.Prefix) (netip.Addr, bool) {
	b := p.Addr().As4()
	v := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
	v += uint64(1) << (32 - p.Bits())
	if v > 0xffffffff {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// ipsDstNAT is IPS_DST_NAT of enum ip_conntrack_status.
const ipsDstNAT = 1 << 5

// ctStatusDNAT matches a connection whose destination was rewritten.
func ctStatusDNAT() match {
	return plain("ct status dnat",
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)})
}

// ctMarkHas matches a connection whose ct mark has bit.
func ctMarkHas(bit uint32) match {
	return plain(fmt.Sprintf("ct mark & %#x != 0", bit),
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bit), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)})
}

// ctMarkMasked matches a connection whose ct mark under mask is v.
func ctMarkMasked(mask, v uint32) match {
	return plain(fmt.Sprintf("ct mark & %#x == %#x", mask, v),
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(v)})
}

// setCtMark sets the ct mark only.
func setCtMark(mark uint32) match {
	return plain(fmt.Sprintf("ct mark set %#x", mark),
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: 1})
}

// syncIngressTable makes TableIngress hold the legs to remote backends
// and a throw default; empty without ingress. An encrypted leg takes the
// device of table TableEncrypt's route to the backend (enc, which follows
// a key rotation); a plain one corv0.
func (dp *Dataplane) syncIngressTable(d *desired, enc map[netip.Prefix]netlink.Link) error {
	want := map[routeKey]netlink.Route{}
	if len(d.ingress) > 0 {
		want[routeKey{dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), typ: unix.RTN_THROW}] = netlink.Route{
			Family: netlink.FAMILY_V4, Table: TableIngress, Type: unix.RTN_THROW,
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		}
		vx, err := dp.nl.LinkByName(VXLANName)
		if err != nil {
			return fmt.Errorf("look up %s: %w", VXLANName, err)
		}
		for _, in := range d.ingress {
			_, encs, plains := backendsBy(in)
			for _, a := range append(encs, plains...) {
				p := netip.PrefixFrom(a, 32)
				link := vx
				if slices.Contains(encs, a) {
					// Fail closed: a leg without its encrypted route is
					// unreachable here, never thrown on to the main
					// table's default route.
					if link = enc[p]; link == nil {
						want[routeKey{dst: p, typ: unix.RTN_UNREACHABLE}] = netlink.Route{
							Family: netlink.FAMILY_V4, Table: TableIngress, Type: unix.RTN_UNREACHABLE,
							Dst: &net.IPNet{IP: ipOf(a), Mask: net.CIDRMask(32, 32)},
						}
						continue
					}
				}
				want[routeKey{dst: p, typ: unix.RTN_UNICAST, index: link.Attrs().Index}] = netlink.Route{
					Family: netlink.FAMILY_V4, Table: TableIngress, Type: unix.RTN_UNICAST,
					Scope: netlink.SCOPE_LINK, LinkIndex: link.Attrs().Index,
					Dst: &net.IPNet{IP: ipOf(a), Mask: net.CIDRMask(32, 32)},
				}
			}
		}
	}
	return dp.syncTable(TableIngress, want)
}

// ingressRule is rule RulePrioIngress; none without ingress.
func ingressRule(d *desired) []*netlink.Rule {
	if d == nil || len(d.ingress) == 0 {
		return nil
	}
	mask := MarkIngress
	r := netlink.NewRule()
	r.Family = netlink.FAMILY_V4
	r.Priority = RulePrioIngress
	r.Mark, r.Mask, r.Table = MarkIngress, &mask, TableIngress
	return []*netlink.Rule{r}
}
