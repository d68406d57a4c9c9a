package dataplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Chains of table inet corridor. Base chains are hooked; the guest chains
// are jumped to from forward.
const (
	chainPrerouting  = "prerouting"
	chainPostrouting = "postrouting"
	chainForward     = "forward"
	chainInput       = "input"
	chainGuestOut    = "guest_out"
	chainGuestIn     = "guest_in"
	// Dispatch chains (issue 19): prerouting and forward jump by the
	// input device to the rules of its kind, so that a packet is checked
	// only against the rules that can match it.
	chainPreGuest = "prerouting_guest"
	chainPrePlain = "prerouting_plain"
	chainPreEnc   = "prerouting_encrypt"
	chainFwdGuest = "forward_guest"
	chainFwdPlain = "forward_plain"
	chainFwdEnc   = "forward_encrypt"
	// chainPreSource counts and drops a guest's IPv4 packet whose source
	// is not the guest's address (see guestSource).
	chainPreSource = "prerouting_source"
)

// Drop counter kinds; see the package documentation.
const (
	DropPair    = "pair"
	DropEgress  = "out"
	DropIngress = "in"
	DropSpoof   = "spoof"
	DropPath    = "path"
	DropHost    = "host"
	DropInvalid = "invalid"
	DropStray   = "stray"
	DropTunnel  = "tunnel"
	DropVTEP    = "vtep"
	// DropHold counts the new TCP connections held off a task about to
	// move (hoststate.State.Hold): each is a SYN its client sends again.
	DropHold = "hold"
	// Allowed is not a drop: allow:<app>:<from>:<to> counts the
	// connections a pair's egress rule let out of a local guest.
	Allowed = "allow"
)

// fingerprintPrefix starts the comment of the first forward rule, which
// carries the fingerprint of the whole ruleset.
const fingerprintPrefix = "corridor ruleset "

// nftRule is one rule to add: its chain, a readable nft-like description
// (which also feeds the fingerprint, so it must name every match and every
// set element), the anonymous sets it uses and its expressions, which refer
// to the sets by pointer so that IDs are given at flush time.
type nftRule struct {
	chain string
	desc  string
	sets  []*anonSet
	build func(sets []*nftables.Set) []expr.Any
}

type anonSet struct {
	set   nftables.Set
	elems []nftables.SetElement
}

// ruleset is the whole desired content of table inet corridor.
type ruleset struct {
	rules    []nftRule
	counters []string // sorted, unique
	hash     string
	// offload: the rules hand plain flows to flowtable corflows, which
	// the batch makes with them.
	offload bool
}

// ruleCount returns the number of rules per chain: every chain of the
// table (chains), so that one the ruleset leaves empty is checked to be
// empty too.
func (rs *ruleset) ruleCount() map[string]int {
	n := map[string]int{}
	for _, c := range chains() {
		n[c.Name] = 0
	}
	for _, r := range rs.rules {
		n[r.chain]++
	}
	return n
}

// text is the ruleset in a readable nft-like form, for logs and debugging.
func (rs *ruleset) text() string {
	var b strings.Builder
	for _, r := range rs.rules {
		fmt.Fprintf(&b, "%s: %s\n", r.chain, r.desc)
	}
	return b.String()
}

// pairTo names the destination class of a rule in its pair counter: the
// class, or "app/class" for a rule to another app's service.
func pairTo(r compile.FirewallRule) string {
	if r.ToApp != "" {
		return r.ToApp + "/" + r.ToClass
	}
	return r.ToClass
}

// counterName names a drop counter; parseCounterName reverses it.
func counterName(kind string, labels ...string) string {
	return strings.Join(append([]string{kind}, labels...), ":")
}

// rulesetBuilder accumulates rules. Its helpers return expression slices
// and descriptions side by side.
type rulesetBuilder struct {
	rs       ruleset
	counters map[string]bool
}

// match is a piece of a rule: the expressions and their description.
// Matches that use a set name it by index into the rule's sets.
type match struct {
	desc  string
	set   *anonSet
	exprs func(set *nftables.Set) []expr.Any
}

func (b *rulesetBuilder) add(chain string, ms ...match) {
	// A rule that reads IPv4 addresses says it matches IPv4 only: in
	// the inet family nft then prints "ip saddr" rather than "@nh,96,32".
	v4, addrs := false, false
	for _, m := range ms {
		v4 = v4 || m.desc == "meta nfproto ipv4"
		addrs = addrs || strings.Contains(m.desc, "ip saddr") || strings.Contains(m.desc, "ip daddr")
	}
	if addrs && !v4 {
		ms = append([]match{ipv4Only()}, ms...)
	}
	var descs []string
	var sets []*anonSet
	for _, m := range ms {
		if m.desc != "" {
			descs = append(descs, m.desc)
		}
		if m.set != nil {
			sets = append(sets, m.set)
		}
	}
	b.rs.rules = append(b.rs.rules, nftRule{
		chain: chain,
		desc:  strings.Join(descs, " "),
		sets:  sets,
		build: func(nsets []*nftables.Set) []expr.Any {
			var out []expr.Any
			i := 0
			for _, m := range ms {
				var s *nftables.Set
				if m.set != nil {
					s = nsets[i]
					i++
				}
				out = append(out, m.exprs(s)...)
			}
			return out
		},
	})
}

func plain(desc string, e ...expr.Any) match {
	return match{desc: desc, exprs: func(*nftables.Set) []expr.Any { return e }}
}

func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// ifMatch matches iifname or oifname: exactly, or by prefix when name ends
// with "*".
func ifMatch(key expr.MetaKey, name string, op expr.CmpOp) match {
	word := "iifname"
	if key == expr.MetaKeyOIFNAME {
		word = "oifname"
	}
	opw := ""
	if op == expr.CmpOpNeq {
		opw = "!= "
	}
	data := ifnameBytes(name)
	if p, ok := strings.CutSuffix(name, "*"); ok {
		data = []byte(p)
	}
	return plain(fmt.Sprintf("%s %s%q", word, opw, name),
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data})
}

// ifAddrSet matches "iifname . ip saddr" (or "oifname . ip daddr") against
// the pairs of a guest interface and its address: a concatenation, which
// nft prints readably (a set of interface names alone is stored with the
// byte order nft reads strings in reverse, and printed as "").
func ifAddrSet(key expr.MetaKey, guests []guestIf, invert bool) match {
	word, addr := "iifname", "ip saddr"
	off := uint32(12)
	if key == expr.MetaKeyOIFNAME {
		word, addr, off = "oifname", "ip daddr", 16
	}
	s := &anonSet{set: nftables.Set{Anonymous: true, Constant: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr)}}
	var ds []string
	for _, g := range guests {
		a := g.addr.As4()
		s.elems = append(s.elems, nftables.SetElement{Key: append(ifnameBytes(g.name), a[:]...)})
		ds = append(ds, fmt.Sprintf("%s . %s", g.name, g.addr))
	}
	return match{
		desc: fmt.Sprintf("%s . %s %s{%s}", word, addr, neq(invert), strings.Join(ds, ", ")),
		set:  s,
		exprs: func(set *nftables.Set) []expr.Any {
			return []expr.Any{
				// An interface name takes four 32-bit registers, the
				// address the fifth.
				&expr.Meta{Key: key, Register: unix.NFT_REG32_00},
				&expr.Payload{DestRegister: unix.NFT_REG32_04, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
				&expr.Lookup{SourceRegister: unix.NFT_REG32_00, SetName: set.Name, SetID: set.ID, Invert: invert},
			}
		},
	}
}

// VXLAN frame layout, from the start of the outer UDP header: UDP 8,
// VXLAN 8, inner Ethernet 14 (its type at 12), then the inner IPv4 header.
const (
	vxlanInnerEtherType = 8 + 8 + 12
	vxlanInnerIPv4      = 8 + 8 + 14
)

// vtepSources matches "ip saddr . <inner ip saddr>" of a VXLAN frame
// against the pairs of a known VTEP and a guest that runs behind it; with
// v6, the outer source is "ip6 saddr".
func vtepSources(pairs [][2]netip.Addr, v6 bool) match {
	kt, word, off, olen, reg := nftables.TypeIPAddr, "ip saddr", uint32(12), uint32(4), uint32(unix.NFT_REG32_01)
	if v6 {
		kt, word, off, olen, reg = nftables.TypeIP6Addr, "ip6 saddr", 8, 16, unix.NFT_REG32_04
	}
	s := &anonSet{set: nftables.Set{Anonymous: true, Constant: true,
		KeyType: nftables.MustConcatSetType(kt, nftables.TypeIPAddr)}}
	var ds []string
	for _, p := range pairs {
		v := p[0].AsSlice()
		g := p[1].As4()
		s.elems = append(s.elems, nftables.SetElement{Key: append(v, g[:]...)})
		ds = append(ds, fmt.Sprintf("%s . %s", p[0], p[1]))
	}
	return match{
		desc: fmt.Sprintf("%s . @th,%d,32 != {%s}", word, (vxlanInnerIPv4+12)*8, strings.Join(ds, ", ")),
		set:  s,
		exprs: func(set *nftables.Set) []expr.Any {
			return []expr.Any{
				&expr.Payload{DestRegister: unix.NFT_REG32_00, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: olen},
				&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: vxlanInnerIPv4 + 12, Len: 4},
				&expr.Lookup{SourceRegister: unix.NFT_REG32_00, SetName: set.Name, SetID: set.ID, Invert: true},
			}
		},
	}
}

// vxlanFrame matches UDP to the VXLAN port, over IPv4 or (v6) IPv6.
func vxlanFrame(v6 bool) []match {
	fam := ipv4Only()
	if v6 {
		fam = plain("meta nfproto ipv6",
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}})
	}
	return []match{fam, plain(fmt.Sprintf("udp dport %d", compile.VXLANPort),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(compile.VXLANPort)})}
}

// innerNotIPv4 matches a VXLAN frame whose inner Ethernet frame is not IPv4.
func innerNotIPv4() match {
	return plain(fmt.Sprintf("@th,%d,16 != 0x0800", vxlanInnerEtherType*8),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: vxlanInnerEtherType, Len: 2},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0x08, 0x00}})
}

// ctMarkIsNot matches a connection whose recorded path (ct mark) is not
// mark.
func ctMarkIsNot(mark uint32) match { return ctMarkCmp(expr.CmpOpNeq, "!=", mark) }

// markIsNot0 matches a packet carrying one of our marks.
func markIsNot0() match {
	return plain(fmt.Sprintf("meta mark & %#x != 0", MarkMask),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MarkMask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)})
}

// ctMarkFromMeta records the packet's path in its connection.
func ctMarkFromMeta() match {
	return plain(fmt.Sprintf("ct mark set meta mark & %#x", MarkMask),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MarkMask), Xor: make([]byte, 4)},
		&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: 1})
}

func neq(invert bool) string {
	if invert {
		return "!= "
	}
	return ""
}

func ipv4Only() match {
	return plain("meta nfproto ipv4",
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}})
}

func notIPv4() match {
	return plain("meta nfproto != ipv4",
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}})
}

// addrOffset is the offset in the IPv4 header of the source or destination.
func addrOffset(src bool) (uint32, string) {
	if src {
		return 12, "ip saddr"
	}
	return 16, "ip daddr"
}

func addrIs(src bool, a netip.Addr, op expr.CmpOp) match {
	off, word := addrOffset(src)
	b := a.As4()
	return plain(fmt.Sprintf("%s %s%s", word, neq(op == expr.CmpOpNeq), a),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Cmp{Op: op, Register: 1, Data: b[:]})
}

func addrSet(src bool, addrs []netip.Addr) match { return addrSetOp(src, addrs, false) }

// addrSetOp is addrSet, or with invert its negation (not in the set).
func addrSetOp(src bool, addrs []netip.Addr, invert bool) match {
	off, word := addrOffset(src)
	if invert {
		word += " !="
	}
	addrs = sortedUnique(addrs)
	s := &anonSet{set: nftables.Set{Anonymous: true, Constant: true, KeyType: nftables.TypeIPAddr}}
	var ds []string
	for _, a := range addrs {
		b := a.Unmap().As4()
		s.elems = append(s.elems, nftables.SetElement{Key: b[:]})
		ds = append(ds, a.String())
	}
	return match{
		desc: fmt.Sprintf("%s {%s}", word, strings.Join(ds, ",")),
		set:  s,
		exprs: func(set *nftables.Set) []expr.Any {
			return []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
				&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: invert},
			}
		},
	}
}

// l4 matches the protocol and, if any, the destination ports.
func l4(proto string, ports []int) []match {
	proto = spec.Protocol(proto)
	num := byte(unix.IPPROTO_TCP)
	if proto == spec.ProtoUDP {
		num = unix.IPPROTO_UDP
	}
	ms := []match{plain("meta l4proto "+proto,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{num}})}
	if len(ports) == 0 {
		return ms
	}
	ports = slices.Clone(ports)
	slices.Sort(ports)
	ports = slices.Compact(ports)
	s := &anonSet{set: nftables.Set{Anonymous: true, Constant: true, KeyType: nftables.TypeInetService}}
	var ds []string
	for _, p := range ports {
		s.elems = append(s.elems, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(uint16(p))})
		ds = append(ds, strconv.Itoa(p))
	}
	return append(ms, match{
		desc: fmt.Sprintf("th dport {%s}", strings.Join(ds, ",")),
		set:  s,
		exprs: func(set *nftables.Set) []expr.Any {
			return []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
			}
		},
	})
}

func ctState(bits uint32, desc string, invert bool) match {
	op := expr.CmpOpNeq // (state & bits) != 0
	if invert {
		op = expr.CmpOpEq
	}
	return plain(fmt.Sprintf("ct state %s%s", neq(invert), desc),
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: make([]byte, 4)})
}

func markIs(mark uint32) match {
	return plain(fmt.Sprintf("meta mark & %#x == %#x", MarkMask, mark),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MarkMask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)})
}

func setMark(mark uint32, ctToo bool) match {
	e := []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
	d := fmt.Sprintf("meta mark set %#x", mark)
	if ctToo {
		e = append(e, &expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: 1})
		d += fmt.Sprintf(" ct mark set %#x", mark)
	}
	return plain(d, e...)
}

func clearMark() match {
	return plain(fmt.Sprintf("meta mark set meta mark & %#x", ^(MarkMask|MarkIngress)),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^(MarkMask | MarkIngress)), Xor: make([]byte, 4)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
}

func ctReply() match {
	return plain("ct direction reply",
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{ctDirReply}})
}

func ctOriginal() match {
	return plain("ct direction original",
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{ctDirOriginal}})
}

func markFromCt() match {
	return plain(fmt.Sprintf("meta mark set ct mark & %#x", MarkMask),
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MarkMask), Xor: make([]byte, 4)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
}

func (b *rulesetBuilder) count(name string) match {
	b.counters[name] = true
	return plain(fmt.Sprintf("counter name %q", name),
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: name})
}

func verdict(kind expr.VerdictKind, desc string) match {
	return plain(desc, &expr.Verdict{Kind: kind})
}

func jump(chain string) match {
	return plain("jump "+chain, &expr.Verdict{Kind: expr.VerdictJump, Chain: chain})
}

var (
	accept = verdict(expr.VerdictAccept, "accept")
	drop   = verdict(expr.VerdictDrop, "drop")
	ret    = verdict(expr.VerdictReturn, "return")
)

// buildRuleset computes the whole content of table inet corridor for d.
// wgName is the name of the WireGuard device. The second device of a key
// rotation (SpareName) is alike for every rule, whether it exists or not,
// so that a packet of an encrypted pair is accepted from either and leaves
// by either, never by anything else.
func buildRuleset(d *desired, wgName string) *ruleset {
	b := &rulesetBuilder{counters: map[string]bool{}}
	guestAny := GuestIfPrefix + "*"
	wgNames := []string{wgName, SpareName(wgName)}
	type tunnel struct {
		dev  string
		mark uint32
	}
	var tunnels []tunnel
	for _, n := range wgNames {
		tunnels = append(tunnels, tunnel{n, MarkEncrypt})
	}
	tunnels = append(tunnels, tunnel{VXLANName, MarkPlain})

	// prerouting: marks. Packets from the tunnels carry the mark of their
	// path (for strict reverse-path filtering, see doc.go) and new
	// connections keep it in conntrack so that replies leave the same way.
	//
	// Dispatch: a packet from a guest or a tunnel jumps to the chain of
	// its kind, which ends with accept (for this chain only: the other
	// base chains of the hook still see it). The rules of one kind match
	// packets of that device only, so each packet meets exactly the
	// rules it met before in the same order, without the others' (issue
	// 19: every rule is evaluated per packet).
	b.add(chainPrerouting, ifMatch(expr.MetaKeyIIFNAME, guestAny, expr.CmpOpEq), jump(chainPreGuest))
	for _, t := range tunnels {
		b.add(chainPrerouting, ifMatch(expr.MetaKeyIIFNAME, t.dev, expr.CmpOpEq), jump(tunnelChain(t.mark, chainPrePlain, chainPreEnc)))
	}
	for _, mk := range []uint32{MarkPlain, MarkEncrypt} {
		c := tunnelChain(mk, chainPrePlain, chainPreEnc)
		b.add(c, ctState(expr.CtStateBitNEW, "new", false), setMark(mk, true), accept)
		b.add(c, setMark(mk, false), accept)
	}
	b.guestSource(d)
	// A reply is never new and never of the original direction: no
	// later rule of the guest chain applies to it.
	b.add(chainPreGuest, ctReply(), markFromCt(), accept)
	// Egress marks first: the pair map below overrides them for remote
	// guests; and the replies of egress from the underlay (egress.go).
	b.egressMarks(d, wgNames)
	if len(d.marks) > 0 {
		for _, g := range d.marks {
			b.add(chainPreGuest, ctOriginal(), ipv4Only(),
				addrSet(true, g.srcs), addrSet(false, g.dsts), setMark(g.mark, false))
		}
		// A new connection from a guest keeps its path in conntrack, as
		// one arriving on a tunnel does: the forward chain accepts a
		// packet from a tunnel only for a connection of that tunnel's path.
		b.add(chainPreGuest, ctState(expr.CtStateBitNEW, "new", false), markIsNot0(), ctMarkFromMeta())
	}
	b.add(chainPreGuest, accept)

	// postrouting: the tunnel devices route their outer packets with the
	// inner packet's mark; without clearing it the outer packet to the
	// remote underlay address would be looked up in our tables, where it
	// is unreachable.
	for _, t := range tunnels {
		b.add(chainPostrouting, ifMatch(expr.MetaKeyOIFNAME, t.dev, expr.CmpOpEq), clearMark())
	}

	// forward: path checks come before the conntrack accept so that they
	// hold for replies too. A guest's packet jumps to forward_guest (the
	// path checks), a tunnel's to the chain of its path (the device
	// checks), and comes back (nothing there accepts, except the replies
	// of ingress legs, which were accepted first before as well): each
	// packet meets the checks of its input device, in the order it met
	// them before, and not the other devices' (issue 19).
	fromGuest := ifMatch(expr.MetaKeyIIFNAME, guestAny, expr.CmpOpEq)
	toGuest := ifMatch(expr.MetaKeyOIFNAME, guestAny, expr.CmpOpEq)
	b.add(chainForward, fromGuest, jump(chainFwdGuest))
	if !guardOff(GuardForwardDrops) {
		ms := []match{markIs(MarkEncrypt)}
		for _, n := range wgNames {
			ms = append(ms, ifMatch(expr.MetaKeyOIFNAME, n, expr.CmpOpNeq))
		}
		b.add(chainFwdGuest, append(ms, b.count(DropPath), drop)...)
		b.add(chainFwdGuest, markIs(MarkPlain), ifMatch(expr.MetaKeyOIFNAME, VXLANName, expr.CmpOpNeq), b.count(DropPath), drop)
		b.add(chainFwdGuest, ifMatch(expr.MetaKeyOIFNAME, guestAny, expr.CmpOpNeq), markIs(0), b.count(DropPath), drop)
	}
	// A task about to move: no new TCP connection reaches it, so that
	// none is in flight when its address switches hosts (the agent waits
	// for the open ones to end). Its clients send their SYN again. The
	// old copies of tasks moving together still reach each other: a
	// request in flight through them must be able to finish. Only where a
	// connection starts (from a local guest, or a published port's client
	// on the underlay): one that arrives by a tunnel was let through by
	// its client's host before that host held it, and is in flight.
	if len(d.hold) > 0 {
		ms := []match{ipv4Only(), addrSet(false, d.hold), addrSetOp(true, d.hold, true)}
		for _, t := range tunnels {
			ms = append(ms, ifMatch(expr.MetaKeyIIFNAME, t.dev, expr.CmpOpNeq))
		}
		ms = append(ms, l4(spec.ProtoTCP, nil)...)
		b.add(chainForward, append(ms, ctState(expr.CtStateBitNEW, "new", false), b.count(DropHold), drop)...)
	}
	for _, t := range tunnels {
		b.add(chainForward, ifMatch(expr.MetaKeyIIFNAME, t.dev, expr.CmpOpEq), jump(tunnelChain(t.mark, chainFwdPlain, chainFwdEnc)))
	}
	for _, mk := range []uint32{MarkPlain, MarkEncrypt} {
		c := tunnelChain(mk, chainFwdPlain, chainFwdEnc)
		b.ingressForward(d, c, mk)
		b.add(c, ifMatch(expr.MetaKeyOIFNAME, guestAny, expr.CmpOpNeq), b.count(DropPath), drop)
		// The device check, for every packet and before the conntrack
		// accept: a packet from a tunnel reaches a guest only for a
		// connection whose path (its ct mark, recorded when it was made:
		// by the mark map for a guest's connection, by the arrival device
		// for a remote one) is that tunnel's. An injected VXLAN frame
		// carrying the 4-tuple of an encrypted connection is dropped
		// here, whatever its sequence numbers.
		if !guardOff(GuardDeviceCheck) {
			b.add(c, ctMarkIsNot(mk), b.count(DropTunnel), drop)
		}
	}
	b.egressForward(d)
	if d.offload {
		b.offloadPlain(guestAny)
		b.rs.offload = true
	}
	b.add(chainForward, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, "established,related", false), accept)
	b.add(chainForward, fromGuest, ctState(expr.CtStateBitINVALID, "invalid", false), b.count(DropInvalid), drop)
	b.add(chainForward, toGuest, ctState(expr.CtStateBitINVALID, "invalid", false), b.count(DropInvalid), drop)
	b.add(chainForward, fromGuest, notIPv4(), b.count(DropInvalid), drop)
	b.add(chainForward, toGuest, notIPv4(), b.count(DropInvalid), drop)
	for _, g := range d.guests {
		b.add(chainForward, ifMatch(expr.MetaKeyIIFNAME, g.name, expr.CmpOpEq), addrIs(true, g.addr, expr.CmpOpNeq), b.count(DropSpoof), drop)
	}
	if len(d.guests) > 0 {
		b.add(chainForward, fromGuest, ifAddrSet(expr.MetaKeyIIFNAME, d.guests, true), b.count(DropStray), drop)
		b.add(chainForward, toGuest, ifAddrSet(expr.MetaKeyOIFNAME, d.guests, true), b.count(DropStray), drop)
	} else {
		b.add(chainForward, fromGuest, b.count(DropStray), drop)
		b.add(chainForward, toGuest, b.count(DropStray), drop)
	}
	b.add(chainForward, fromGuest, jump(chainGuestOut))
	b.add(chainForward, toGuest, jump(chainGuestIn))
	// Only guest traffic to remote guests, allowed by guest_out, gets here.
	b.add(chainForward, fromGuest, accept)

	// guest_out: egress rules return to forward, which goes on with the
	// ingress checks when the destination is local.
	var egress, ingress []compile.FirewallRule
	for _, r := range d.firewall {
		if r.Direction == compile.Egress {
			egress = append(egress, r)
		} else {
			ingress = append(ingress, r)
		}
	}
	for _, r := range egress {
		if len(r.Sources) == 0 || len(r.Dests) == 0 {
			continue
		}
		ms := []match{addrSet(true, r.Sources), addrSet(false, r.Dests)}
		ms = append(ms, l4(r.Protocol, r.Ports)...)
		ms = append(ms, b.count(counterName(Allowed, r.App, r.FromClass, pairTo(r))))
		b.add(chainGuestOut, append(ms, ret)...)
	}
	for _, r := range egress {
		if len(r.Sources) == 0 || len(r.Dests) == 0 {
			continue
		}
		b.add(chainGuestOut, addrSet(true, r.Sources), addrSet(false, r.Dests), b.count(counterName(DropPair, r.App, r.FromClass, pairTo(r))), drop)
	}
	b.egressAllow(d)
	for _, g := range d.guests {
		b.add(chainGuestOut, ifMatch(expr.MetaKeyIIFNAME, g.name, expr.CmpOpEq), b.count(counterName(DropEgress, g.app, g.class)), drop)
	}
	b.add(chainGuestOut, b.count(DropStray), drop)

	// guest_in: local sources from a guest interface, remote sources from
	// the device of the pair's path; clients of a published port to a
	// local backend (ingress.go).
	b.ingressAllow(d)
	for _, r := range ingress {
		if len(r.Dests) == 0 {
			continue
		}
		remote := map[netip.Addr]bool{}
		for _, a := range r.RemoteSources {
			remote[a.Unmap()] = true
		}
		var local []netip.Addr
		for _, a := range r.Sources {
			if !remote[a.Unmap()] {
				local = append(local, a)
			}
		}
		devs := []string{VXLANName}
		if r.Encrypt {
			devs = wgNames
			if guardOff(GuardDeviceCheck) {
				devs = wgNames[:1]
			}
		}
		if len(local) > 0 {
			ms := []match{fromGuest, addrSet(true, local), addrSet(false, r.Dests)}
			ms = append(ms, l4(r.Protocol, r.Ports)...)
			b.add(chainGuestIn, append(ms, accept)...)
		}
		for _, dev := range devs {
			if len(r.RemoteSources) == 0 {
				break
			}
			ms := []match{ifMatch(expr.MetaKeyIIFNAME, dev, expr.CmpOpEq), addrSet(true, r.RemoteSources), addrSet(false, r.Dests)}
			if r.Encrypt && guardOff(GuardDeviceCheck) {
				ms = ms[1:]
			}
			ms = append(ms, l4(r.Protocol, r.Ports)...)
			b.add(chainGuestIn, append(ms, accept)...)
		}
	}
	for _, r := range ingress {
		srcs := append(slices.Clone(r.Sources), r.RemoteSources...)
		if len(srcs) == 0 || len(r.Dests) == 0 {
			continue
		}
		b.add(chainGuestIn, addrSet(true, srcs), addrSet(false, r.Dests), b.count(counterName(DropPair, r.App, r.FromClass, pairTo(r))), drop)
	}
	for _, g := range d.guests {
		b.add(chainGuestIn, ifMatch(expr.MetaKeyOIFNAME, g.name, expr.CmpOpEq), b.count(counterName(DropIngress, g.app, g.class)), drop)
	}
	b.add(chainGuestIn, b.count(DropStray), drop)

	// input: guests and tunnels open no connection to the host itself.
	for _, from := range append([]string{guestAny, VXLANName}, wgNames...) {
		b.add(chainInput, ifMatch(expr.MetaKeyIIFNAME, from, expr.CmpOpEq), ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, "established,related", true), b.count(DropHost), drop)
	}

	// input: a VXLAN frame is taken only from a known VTEP (a remote host
	// of the state's VXLAN entries), carrying an inner IPv4 packet whose
	// source is a guest that runs behind that VTEP: no underlay host can
	// speak for another host's guests.
	if !guardOff(GuardVTEPSource) {
		for _, v6 := range []bool{false, true} {
			var pairs [][2]netip.Addr
			for _, p := range d.vtepGuests {
				if p[0].Is6() == v6 {
					pairs = append(pairs, p)
				}
			}
			if len(pairs) == 0 {
				b.add(chainInput, append(vxlanFrame(v6), b.count(DropVTEP), drop)...)
				continue
			}
			b.add(chainInput, append(vxlanFrame(v6), innerNotIPv4(), b.count(DropVTEP), drop)...)
			b.add(chainInput, append(vxlanFrame(v6), vtepSources(pairs, v6), b.count(DropVTEP), drop)...)
		}
	}

	// raw_prerouting, raw_output: the tunnels' underlay packets with
	// known peers go untracked; input: WireGuard's ports from peers only.
	b.underlayLegs(d)

	b.egressNAT(d)
	b.ingressDNAT(d, wgNames)
	b.ingressMarks(d, wgNames)
	b.ingressSNAT(d)

	for c := range b.counters {
		b.rs.counters = append(b.rs.counters, c)
	}
	slices.Sort(b.rs.counters)
	h := sha256.New()
	h.Write([]byte(wgName + "\n" + b.rs.text()))
	b.rs.hash = hex.EncodeToString(h.Sum(nil))[:32]
	return &b.rs
}

// guestSource is the first check of a guest's packet, before anything
// accepts it, for packets to the host as well as forwarded ones: an IPv4
// packet from a guest interface carries the address of that interface's
// guest as its source, or is dropped (counted as spoof on a guest
// interface of the state, as stray on any other). One lookup of
// "iifname . ip saddr" per packet; only a failing packet goes on to
// prerouting_source. It stands in for the kernel's reverse-path check,
// which the guest interfaces skip (accept_local=1, see doc.go and
// guestSysctls): with it, a guest can neither spoof another guest's
// address nor one of the host's own.
func (b *rulesetBuilder) guestSource(d *desired) {
	if guardOff(GuardGuestSource) {
		return
	}
	if len(d.guests) > 0 {
		b.add(chainPreGuest, ipv4Only(), ifAddrSet(expr.MetaKeyIIFNAME, d.guests, true), jump(chainPreSource))
	} else {
		b.add(chainPreGuest, ipv4Only(), jump(chainPreSource))
	}
	for _, g := range d.guests {
		b.add(chainPreSource, ifMatch(expr.MetaKeyIIFNAME, g.name, expr.CmpOpEq), b.count(DropSpoof), drop)
	}
	b.add(chainPreSource, b.count(DropStray), drop)
}

// tunnelChain names the dispatch chain of a tunnel's path: plain for
// MarkPlain (VXLAN), enc for MarkEncrypt (the WireGuard devices).
func tunnelChain(mark uint32, plain, enc string) string {
	if mark == MarkPlain {
		return plain
	}
	return enc
}

func sortedUnique(addrs []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.Unmap())
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// Conntrack directions (enum ip_conntrack_dir), one byte in a register.
const (
	ctDirOriginal = 0
	ctDirReply    = 1
)
