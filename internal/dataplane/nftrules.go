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
}

// ruleCount returns the number of rules per chain.
func (rs *ruleset) ruleCount() map[string]int {
	n := map[string]int{chainPrerouting: 0, chainPostrouting: 0, chainForward: 0, chainInput: 0, chainGuestOut: 0, chainGuestIn: 0}
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

func ifSet(key expr.MetaKey, names []string, invert bool) match {
	word := "iifname"
	if key == expr.MetaKeyOIFNAME {
		word = "oifname"
	}
	s := &anonSet{set: nftables.Set{Anonymous: true, Constant: true, KeyType: nftables.TypeIFName}}
	for _, n := range names {
		s.elems = append(s.elems, nftables.SetElement{Key: ifnameBytes(n)})
	}
	return match{
		desc: fmt.Sprintf("%s %s{%s}", word, neq(invert), strings.Join(names, ",")),
		set:  s,
		exprs: func(set *nftables.Set) []expr.Any {
			return []expr.Any{
				&expr.Meta{Key: key, Register: 1},
				&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: invert},
			}
		},
	}
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

func addrSet(src bool, addrs []netip.Addr) match {
	off, word := addrOffset(src)
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
				&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
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
	return plain(fmt.Sprintf("meta mark set meta mark & %#x", ^MarkMask),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^MarkMask), Xor: make([]byte, 4)},
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

// markMap sets the mark from the map "ip saddr . ip daddr : mark".
func markMap(marks []pairMark) match {
	s := &anonSet{set: nftables.Set{
		Anonymous: true, Constant: true, IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr),
		DataType: nftables.TypeMark,
	}}
	var ds []string
	for _, m := range marks {
		src, dst := m.src.As4(), m.dst.As4()
		s.elems = append(s.elems, nftables.SetElement{
			Key: append(src[:], dst[:]...),
			Val: binaryutil.NativeEndian.PutUint32(m.mark),
		})
		ds = append(ds, fmt.Sprintf("%s . %s : %#x", m.src, m.dst, m.mark))
	}
	return match{
		desc: fmt.Sprintf("meta mark set ip saddr . ip daddr map {%s}", strings.Join(ds, ", ")),
		set:  s,
		exprs: func(set *nftables.Set) []expr.Any {
			return []expr.Any{
				// The two addresses go into consecutive 32-bit registers
				// (NFT_REG32_00 and NFT_REG32_01), which is how the kernel
				// reads a concatenated key.
				&expr.Payload{DestRegister: unix.NFT_REG32_00, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
				&expr.Payload{DestRegister: unix.NFT_REG32_01, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
				&expr.Lookup{SourceRegister: unix.NFT_REG32_00, DestRegister: 1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			}
		},
	}
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
// wgName is the name of the WireGuard device.
func buildRuleset(d *desired, wgName string) *ruleset {
	b := &rulesetBuilder{counters: map[string]bool{}}
	guestAny := GuestIfPrefix + "*"

	// prerouting: marks. Packets from the tunnels carry the mark of their
	// path (for strict reverse-path filtering, see doc.go) and new
	// connections keep it in conntrack so that replies leave the same way.
	for _, t := range []struct {
		dev  string
		mark uint32
	}{{wgName, MarkEncrypt}, {VXLANName, MarkPlain}} {
		b.add(chainPrerouting, ifMatch(expr.MetaKeyIIFNAME, t.dev, expr.CmpOpEq), setMark(t.mark, false))
		b.add(chainPrerouting, ifMatch(expr.MetaKeyIIFNAME, t.dev, expr.CmpOpEq), ctState(expr.CtStateBitNEW, "new", false), setMark(t.mark, true))
	}
	b.add(chainPrerouting, ifMatch(expr.MetaKeyIIFNAME, guestAny, expr.CmpOpEq), ctReply(), markFromCt())
	if len(d.marks) > 0 {
		b.add(chainPrerouting, ifMatch(expr.MetaKeyIIFNAME, guestAny, expr.CmpOpEq), ctOriginal(), ipv4Only(), markMap(d.marks))
	}

	// postrouting: the tunnel devices route their outer packets with the
	// inner packet's mark; without clearing it the outer packet to the
	// remote underlay address would be looked up in our tables, where it
	// is unreachable.
	b.add(chainPostrouting, ifSet(expr.MetaKeyOIFNAME, []string{VXLANName, wgName}, false), clearMark())

	// forward: path checks come before the conntrack accept so that they
	// hold for replies too.
	fromGuest := ifMatch(expr.MetaKeyIIFNAME, guestAny, expr.CmpOpEq)
	toGuest := ifMatch(expr.MetaKeyOIFNAME, guestAny, expr.CmpOpEq)
	if !guardOff(GuardForwardDrops) {
		b.add(chainForward, fromGuest, markIs(MarkEncrypt), ifMatch(expr.MetaKeyOIFNAME, wgName, expr.CmpOpNeq), b.count(DropPath), drop)
		b.add(chainForward, fromGuest, markIs(MarkPlain), ifMatch(expr.MetaKeyOIFNAME, VXLANName, expr.CmpOpNeq), b.count(DropPath), drop)
		b.add(chainForward, fromGuest, ifMatch(expr.MetaKeyOIFNAME, guestAny, expr.CmpOpNeq), markIs(0), b.count(DropPath), drop)
	}
	b.add(chainForward, ifSet(expr.MetaKeyIIFNAME, []string{VXLANName, wgName}, false), ifMatch(expr.MetaKeyOIFNAME, guestAny, expr.CmpOpNeq), b.count(DropPath), drop)
	b.add(chainForward, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, "established,related", false), accept)
	b.add(chainForward, fromGuest, ctState(expr.CtStateBitINVALID, "invalid", false), b.count(DropInvalid), drop)
	b.add(chainForward, toGuest, ctState(expr.CtStateBitINVALID, "invalid", false), b.count(DropInvalid), drop)
	b.add(chainForward, fromGuest, notIPv4(), b.count(DropInvalid), drop)
	b.add(chainForward, toGuest, notIPv4(), b.count(DropInvalid), drop)
	var names []string
	for _, g := range d.guests {
		b.add(chainForward, ifMatch(expr.MetaKeyIIFNAME, g.name, expr.CmpOpEq), addrIs(true, g.addr, expr.CmpOpNeq), b.count(DropSpoof), drop)
		names = append(names, g.name)
	}
	if len(names) > 0 {
		b.add(chainForward, fromGuest, ifSet(expr.MetaKeyIIFNAME, names, true), b.count(DropStray), drop)
		b.add(chainForward, toGuest, ifSet(expr.MetaKeyOIFNAME, names, true), b.count(DropStray), drop)
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
		b.add(chainGuestOut, append(ms, ret)...)
	}
	for _, r := range egress {
		if len(r.Sources) == 0 || len(r.Dests) == 0 {
			continue
		}
		b.add(chainGuestOut, addrSet(true, r.Sources), addrSet(false, r.Dests), b.count(counterName(DropPair, r.App, r.FromClass, r.ToClass)), drop)
	}
	for _, g := range d.guests {
		b.add(chainGuestOut, ifMatch(expr.MetaKeyIIFNAME, g.name, expr.CmpOpEq), b.count(counterName(DropEgress, g.app, g.class)), drop)
	}
	b.add(chainGuestOut, b.count(DropStray), drop)

	// guest_in: local sources from a guest interface, remote sources from
	// the device of the pair's path.
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
		dev := VXLANName
		if r.Encrypt {
			dev = wgName
		}
		if len(local) > 0 {
			ms := []match{fromGuest, addrSet(true, local), addrSet(false, r.Dests)}
			ms = append(ms, l4(r.Protocol, r.Ports)...)
			b.add(chainGuestIn, append(ms, accept)...)
		}
		if len(r.RemoteSources) > 0 {
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
		b.add(chainGuestIn, addrSet(true, srcs), addrSet(false, r.Dests), b.count(counterName(DropPair, r.App, r.FromClass, r.ToClass)), drop)
	}
	for _, g := range d.guests {
		b.add(chainGuestIn, ifMatch(expr.MetaKeyOIFNAME, g.name, expr.CmpOpEq), b.count(counterName(DropIngress, g.app, g.class)), drop)
	}
	b.add(chainGuestIn, b.count(DropStray), drop)

	// input: guests and tunnels open no connection to the host itself.
	hostFacing := ifSet(expr.MetaKeyIIFNAME, []string{VXLANName, wgName}, false)
	b.add(chainInput, fromGuest, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, "established,related", true), b.count(DropHost), drop)
	b.add(chainInput, hostFacing, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, "established,related", true), b.count(DropHost), drop)

	for c := range b.counters {
		b.rs.counters = append(b.rs.counters, c)
	}
	slices.Sort(b.rs.counters)
	h := sha256.New()
	h.Write([]byte(wgName + "\n" + b.rs.text()))
	b.rs.hash = hex.EncodeToString(h.Sum(nil))[:32]
	return &b.rs
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
