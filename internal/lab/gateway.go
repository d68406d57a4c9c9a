package lab

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/corridor-dev/corridor/internal/hostns"
)

// The lab's gateway counts what reaches it.
//
// The underlay namespace is every lab server's default gateway (.2 on the
// bridge, forwarding off: see makeUnderlay). A packet a server sends there
// is one that no route of the server's own kept on the underlay: on a real
// network it would leave in plain for the outside world. The gateway drops
// it, as before, and counts it first, so that a test (and `corridor lab
// status`) can tell "nothing escaped" from "nothing was looked at".
// An app's allowed egress (SNATed to the server's underlay address) goes
// this way too and is counted: a "nothing escaped" check runs apps with
// no egress rules (as the sample shop).
//
// What is counted: IPv4 packets addressed to the gateway at the link layer
// (pkttype host: routed to it, not bridged between servers) whose
// destination is outside the underlay (not for the gateway itself, not a
// server's control traffic), arriving on any interface but lo. The table
// is family ip, in the underlay namespace, and goes with it.
const (
	// GatewayTable is the gateway's nftables table (family ip) in the
	// underlay namespace.
	GatewayTable = "corgateway"
	// GatewayCounter is the named counter of what reached the gateway.
	GatewayCounter = "escaped"
)

var gatewayTable = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: GatewayTable}

// GatewayStatus is what the lab's gateway counted.
type GatewayStatus struct {
	// Address is the servers' default gateway on the underlay.
	Address string `json:"address"`
	// Packets and Bytes reached the gateway for an address outside the
	// underlay (and were dropped there): what escaped every server's
	// guards would be counted here.
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	// Error says why the counter could not be read (no underlay
	// namespace, a lab made before the counter existed).
	Error string `json:"error,omitempty"`
}

// makeGatewayCounter adds the gateway's table, counter and rule to the
// underlay namespace, in one batch.
func makeGatewayCounter(namespace string, underlay netip.Prefix) error {
	ns, err := hostns.Open(namespace)
	if err != nil {
		return fmt.Errorf("lab: namespace %s: %w", namespace, err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("lab: nftables in %s: %w", namespace, err)
	}
	t := c.AddTable(gatewayTable)
	c.AddObj(&nftables.CounterObj{Table: t, Name: GatewayCounter})
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &policy,
	})
	// The outside client's networks (client.go) are lab destinations
	// reached on the bridge, not through the gateway; where the machine
	// has br_netfilter, frames bridged to the client pass this hook as if
	// addressed to the gateway, and the rule below would drop them.
	for _, n := range []netip.Prefix{ClientNetwork, clientDeniedNW} {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: clientRule(n)})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: gatewayRule(underlay.Masked())})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("lab: gateway counter in %s: %w", namespace, err)
	}
	return nil
}

// gatewayRule is: iifname != "lo" meta pkttype host ip daddr != underlay
// counter name escaped drop.
func gatewayRule(underlay netip.Prefix) []expr.Any {
	lo := make([]byte, unix.IFNAMSIZ)
	copy(lo, "lo")
	m := make([]byte, 4)
	for i := 0; i < underlay.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	net4 := underlay.Addr().As4()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: lo},
		&expr.Meta{Key: expr.MetaKeyPKTTYPE, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.PACKET_HOST}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: net4[:]},
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: GatewayCounter},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// clientRule is: ip daddr n accept.
func clientRule(n netip.Prefix) []expr.Any {
	m := make([]byte, 4)
	for i := 0; i < n.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	a := n.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// errNoGatewayCounter: the underlay namespace has no gateway counter.
var errNoGatewayCounter = errors.New("no gateway counter (a lab made by an older corridor?)")

// Gateway reads what the lab's gateway counted.
func (l *Lab) Gateway() GatewayStatus {
	gs := GatewayStatus{Address: gatewayAddr(l.Underlay).String()}
	p, b, err := readGatewayCounter(l.UnderlayNamespace)
	if err != nil {
		gs.Error = err.Error()
	}
	gs.Packets, gs.Bytes = p, b
	return gs
}

func readGatewayCounter(namespace string) (packets, bytes uint64, err error) {
	if !hostns.Exists(namespace) {
		return 0, 0, fmt.Errorf("no underlay namespace %s", namespace)
	}
	ns, err := hostns.Open(namespace)
	if err != nil {
		return 0, 0, fmt.Errorf("namespace %s: %w", namespace, err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return 0, 0, fmt.Errorf("nftables in %s: %w", namespace, err)
	}
	objs, err := c.GetObjects(gatewayTable)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, 0, errNoGatewayCounter
		}
		return 0, 0, fmt.Errorf("read the gateway counter in %s: %w", namespace, err)
	}
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok && co.Name == GatewayCounter {
			return co.Packets, co.Bytes, nil
		}
	}
	return 0, 0, errNoGatewayCounter
}
