package dataplane

import (
	"fmt"
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
