package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/corridor-dev/corridor/internal/compile"
)

// The underlay legs of the tunnels (WireGuard's UDP between this host and
// its peers, VXLAN's UDP between this host and the remote VTEPs) are not
// tracked by conntrack: two base chains at the raw priority (-300, before
// conntrack's hook at -200) mark them "notrack". Nothing of ours reads
// their conntrack state (the firewall's stateful checks are on the inner
// packets, which the kernel tracks afresh after decapsulation), and a
// connection-tracking lookup per outer packet, and a conntrack entry per
// underlay flow, are work the standalone tunnels do not do.
//
// Only the tunnel packets to and from the known peers are exempted,
// matched by (peer underlay address, our port): "ip saddr . udp dport" on
// the way in, "ip daddr . udp sport" (WireGuard: our listen port) or
// "ip daddr . udp dport" (VXLAN: the remote's port; the source port is a
// flow hash) on the way out. The input chain keeps what it checks
// statelessly: VXLAN frames only from known VTEPs with inner sources
// behind them (vtep), and now WireGuard's ports only from known peers
// (tunnel-peer). A packet of a guest that would match these sets (a
// forged underlay source) is untracked, so it is dropped by the forward
// and input chains' conntrack-based checks (no established state, ct mark
// 0), never accepted.
const (
	chainRawPrerouting = "raw_prerouting"
	chainRawOutput     = "raw_output"
)

// DropTunnelPeer counts packets to this host's WireGuard ports (the listen
// port and the spare device's, port+1) from an underlay address that is
// no peer of the state (input chain).
const DropTunnelPeer = "tunnel-peer"

// rawChains are the notrack base chains.
func rawChains() []*nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return []*nftables.Chain{
		{Name: chainRawPrerouting, Table: corridorTable, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &accept},
		{Name: chainRawOutput, Table: corridorTable, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRaw, Policy: &accept},
	}
}

// wgPorts are this host's WireGuard ports: the device's and the spare
// device's (rotation.go), alike whether the spare exists or not.
func wgPorts(d *desired) []uint16 {
	return []uint16{uint16(d.listenPort), uint16(d.listenPort + 1)}
}

// underlayLegs adds the notrack rules of the tunnels' underlay packets
// and the input chain's check of WireGuard's sources.
func (b *rulesetBuilder) underlayLegs(d *desired) {
	var wgPeers, vteps []netip.Addr
	for _, p := range d.peers {
		wgPeers = append(wgPeers, p.endpoint.Addr().Unmap())
	}
	for _, a := range d.fdb {
		vteps = append(vteps, a.Unmap())
	}
	wgPeers, vteps = sortedUnique(wgPeers), sortedUnique(vteps)
	for _, v6 := range []bool{false, true} {
		peers := slices.DeleteFunc(slices.Clone(wgPeers), func(a netip.Addr) bool { return a.Is6() != v6 })
		remotes := slices.DeleteFunc(slices.Clone(vteps), func(a netip.Addr) bool { return a.Is6() != v6 })
		var in, outWG, outVX []netip.AddrPort
		for _, a := range peers {
			for _, p := range wgPorts(d) {
				in = append(in, netip.AddrPortFrom(a, p))
				outWG = append(outWG, netip.AddrPortFrom(a, p))
			}
		}
		for _, a := range remotes {
			in = append(in, netip.AddrPortFrom(a, compile.VXLANPort))
			outVX = append(outVX, netip.AddrPortFrom(a, compile.VXLANPort))
		}
		if len(in) > 0 {
			b.add(chainRawPrerouting, family(v6), udp(), addrPortSet(true, false, v6, in), notrack())
		}
		if len(outWG) > 0 {
			b.add(chainRawOutput, family(v6), udp(), addrPortSet(false, true, v6, outWG), notrack())
		}
		if len(outVX) > 0 {
			b.add(chainRawOutput, family(v6), udp(), addrPortSet(false, false, v6, outVX), notrack())
		}
		// input: WireGuard's ports take packets from known peers only
		// (WireGuard would drop the others after a lookup of its own;
		// here they cost no conntrack entry either).
		ms := []match{family(v6), udp(), dportSet(wgPorts(d))}
		if len(peers) > 0 {
			ms = append(ms, srcSetNot(v6, peers))
		}
		b.add(chainInput, append(ms, b.count(DropTunnelPeer), drop)...)
	}
}

func family(v6 bool) match {
	if !v6 {
		return ipv4Only()
	}
	return plain("meta nfproto ipv6",
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}})
}

func udp() match {
	return plain("meta l4proto udp",
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}})
}

func notrack() match { return plain("notrack", &expr.Notrack{}) }

// addrOff returns the offset and length of the IPv4 or IPv6 source or
// destination address, and its nft word.
func addrOff(src, v6 bool) (off, n uint32, word string) {
	switch {
	case v6 && src:
		return 8, 16, "ip6 saddr"
	case v6:
		return 24, 16, "ip6 daddr"
	case src:
		return 12, 4, "ip saddr"
	}
	return 16, 4, "ip daddr"
}

// addrPortSet matches "ip saddr . udp dport" (src) or "ip daddr . udp
// sport|dport" (sport chooses) against (address, port) pairs.
func addrPortSet(src, sport, v6 bool, aps []netip.AddrPort) match {
	off, n, word := addrOff(src, v6)
	pword, poff := "udp dport", uint32(2)
	if sport {
		pword, poff = "udp sport", 0
	}
	kt := nftables.TypeIPAddr
	if v6 {
		kt = nftables.TypeIP6Addr
	}
	slices.SortFunc(aps, netip.AddrPort.Compare)
	aps = slices.Compact(aps)
	s := &anonSet{set: nftables.Set{Anonymous: true, Constant: true,
		KeyType: nftables.MustConcatSetType(kt, nftables.TypeInetService)}}
	var ds []string
	for _, ap := range aps {
		// The port is padded to a 32-bit register in a concatenation.
		key := append(ap.Addr().AsSlice(), binaryutil.BigEndian.PutUint16(ap.Port())...)
		s.elems = append(s.elems, nftables.SetElement{Key: append(key, 0, 0)})
		ds = append(ds, fmt.Sprintf("%s . %d", ap.Addr(), ap.Port()))
	}
	return match{
		desc: fmt.Sprintf("%s . %s {%s}", word, pword, strings.Join(ds, ", ")),
		set:  s,
		exprs: func(set *nftables.Set) []expr.Any {
			return []expr.Any{
				&expr.Payload{DestRegister: unix.NFT_REG32_00, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
				&expr.Payload{DestRegister: unix.NFT_REG32_00 + n/4, Base: expr.PayloadBaseTransportHeader, Offset: poff, Len: 2},
				&expr.Lookup{SourceRegister: unix.NFT_REG32_00, SetName: set.Name, SetID: set.ID},
			}
		},
	}
}

// dportSet matches the UDP destination port against ports.
func dportSet(ports []uint16) match {
	s := &anonSet{set: nftables.Set{Anonymous: true, Constant: true, KeyType: nftables.TypeInetService}}
	var ds []string
	for _, p := range ports {
		s.elems = append(s.elems, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)})
		ds = append(ds, fmt.Sprint(p))
	}
	return match{
		desc: fmt.Sprintf("udp dport {%s}", strings.Join(ds, ",")),
		set:  s,
		exprs: func(set *nftables.Set) []expr.Any {
			return []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
			}
		},
	}
}

// srcSetNot matches a source address (IPv4, or IPv6 with v6) not in addrs.
func srcSetNot(v6 bool, addrs []netip.Addr) match {
	off, n, word := addrOff(true, v6)
	kt := nftables.TypeIPAddr
	if v6 {
		kt = nftables.TypeIP6Addr
	}
	s := &anonSet{set: nftables.Set{Anonymous: true, Constant: true, KeyType: kt}}
	var ds []string
	for _, a := range addrs {
		s.elems = append(s.elems, nftables.SetElement{Key: a.AsSlice()})
		ds = append(ds, a.String())
	}
	return match{
		desc: fmt.Sprintf("%s != {%s}", word, strings.Join(ds, ",")),
		set:  s,
		exprs: func(set *nftables.Set) []expr.Any {
			return []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
				&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: true},
			}
		},
	}
}
