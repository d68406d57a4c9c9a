package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TCP conntrack states (enum tcp_conntrack) in which a connection may
// still carry data: from the first SYN to the last ACK. TIME_WAIT and
// CLOSE linger in the table for minutes with nothing left to send.
const (
	tcpSynSent   = 1
	tcpSynRecv   = 2
	tcpEstab     = 3
	tcpFinWait   = 4
	tcpCloseWait = 5
	tcpLastAck   = 6
	tcpSynSent2  = 9
)

func tcpOpen(state uint8) bool {
	switch state {
	case tcpSynSent, tcpSynRecv, tcpEstab, tcpFinWait, tcpCloseWait, tcpLastAck, tcpSynSent2:
		return true
	}
	return false
}

// OpenConns counts the TCP connections through this host that are still
// open to one of addrs: those whose reply comes from it, which after a
// published port's DNAT is the task, not the address the client dialled;
// not those from one of addrs (tasks that move together).
// The agent waits for none to be left before a task's address moves to
// another host (hoststate.State.Hold).
func (dp *Dataplane) OpenConns(addrs []netip.Addr) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	flows, err := retryDump(func() ([]*netlink.ConntrackFlow, error) {
		return dp.nl.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	})
	if err != nil {
		return 0, fmt.Errorf("dataplane: list conntrack: %w", err)
	}
	return countOpen(flows, addrs), nil
}

func countOpen(flows []*netlink.ConntrackFlow, addrs []netip.Addr) int {
	n := 0
	for _, f := range flows {
		if f.Forward.Protocol != unix.IPPROTO_TCP {
			continue
		}
		tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP)
		if !ok || !tcpOpen(tcp.State) {
			continue
		}
		// Between two moving tasks (their old copies, which stop
		// together): not counted, as the hold lets them through.
		if src, ok := netip.AddrFromSlice(f.Forward.SrcIP); ok && slices.Contains(addrs, src.Unmap()) {
			continue
		}
		from, ok := netip.AddrFromSlice(f.Reverse.SrcIP)
		if ok && slices.Contains(addrs, from.Unmap()) {
			n++
		}
	}
	return n
}

// FlushConns deletes every connection tracked to or from one of addrs
// (of any protocol and state), and says how many. The agent calls it once
// a moving task's address has switched hosts: whatever conntrack still
// holds for it recorded the old path (its mark, and so the device its
// replies take), and a client's retried SYN of a connection tracked
// before the switch would be answered along that old path and lost.
func (dp *Dataplane) FlushConns(addrs []netip.Addr) (uint, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	n, err := dp.nl.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, connsOf(addrs))
	if err != nil {
		return n, fmt.Errorf("dataplane: delete conntrack entries of moved tasks: %w", err)
	}
	return n, nil
}

// connsOf matches the flows whose original destination, reply source or
// original source is one of its addresses.
type connsOf []netip.Addr

func (c connsOf) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	for _, ip := range []net.IP{f.Forward.DstIP, f.Reverse.SrcIP, f.Forward.SrcIP} {
		if a, ok := netip.AddrFromSlice(ip); ok && slices.Contains(c, a.Unmap()) {
			return true
		}
	}
	return false
}
