package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// conntrackLines returns the conntrack table of namespace ns, one entry a
// line (/proc/net/nf_conntrack is per network namespace).
func conntrackLines(t *testing.T, ns string) []string {
	t.Helper()
	out := run(t, "ip", "netns", "exec", ns, "cat", "/proc/net/nf_conntrack")
	return strings.Split(strings.TrimSpace(out), "\n")
}

// underlayTracked returns the conntrack entries of ns for UDP between the
// underlay addresses x and y to one of ports (either side's port).
func underlayTracked(lines []string, x, y netip.Addr, ports ...int) []string {
	var found []string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 3 || f[2] != "udp" {
			continue
		}
		between := (strings.Contains(l, "src="+x.String()+" dst="+y.String()+" ") ||
			strings.Contains(l, "src="+y.String()+" dst="+x.String()+" "))
		for _, p := range ports {
			if between && (strings.Contains(l, fmt.Sprintf(" dport=%d ", p)) || strings.Contains(l, fmt.Sprintf(" sport=%d ", p))) {
				found = append(found, l)
				break
			}
		}
	}
	return found
}

// testUnderlayUntracked: the tunnels' underlay packets between A and B
// (WireGuard on port 51820, VXLAN on compile.VXLANPort) make no conntrack
// entry on either host, while the guests' connections through them do
// (the control: the table is read, and the inner packets stay tracked,
// which the firewall's stateful checks need); and a host that is no peer
// of B gets nothing through B's WireGuard port (the tunnel-peer counter).
func testUnderlayUntracked(t *testing.T, s *scenario) {
	for _, h := range []*host{s.a, s.b} {
		// Entries made before this test (the first handshake may have
		// been sent by a peer configured before its firewall) expire
		// only after 30 s: start from an empty table.
		if err := testnet.Netlink(t, h.name).ConntrackTableFlush(netlink.ConntrackTable); err != nil {
			t.Fatalf("flush the conntrack table of %s: %v", h.name, err)
		}
	}
	s.mustConnect(t, s.a1, s.b1, portDB, true)     // WireGuard
	s.mustConnect(t, s.a1, s.b2, portCache, false) // VXLAN
	for _, h := range []*host{s.a, s.b} {
		lines := conntrackLines(t, h.name)
		inner := 0
		for _, l := range lines {
			if strings.Contains(l, "src="+s.a1.addr.String()+" dst="+s.b1.addr.String()+" ") ||
				strings.Contains(l, "src="+s.a1.addr.String()+" dst="+s.b2.addr.String()+" ") {
				inner++
			}
		}
		if inner < 2 {
			t.Fatalf("%s: the guests' connections a1->b1 and a1->b2 are not in conntrack (control):\n%s", h.name, strings.Join(lines, "\n"))
		}
		if got := underlayTracked(lines, s.a.underlay, s.b.underlay, 51820, 51821, compile.VXLANPort); len(got) > 0 {
			t.Fatalf("%s: the tunnels' underlay packets are tracked by conntrack:\n%s", h.name, strings.Join(got, "\n"))
		}
	}

	// A third underlay host, no peer of B, sends to B's WireGuard port.
	c := s.addThirdHost(t)
	before := s.b.dropCount(t, DropTunnelPeer)
	// A WireGuard handshake initiation is 148 bytes, type 1.
	msg := make([]byte, 148)
	msg[0] = 1
	deadline := time.Now().Add(5 * time.Second)
	for s.b.dropCount(t, DropTunnelPeer) <= before {
		if time.Now().After(deadline) {
			t.Fatalf("a non-peer's packets to B's WireGuard port were not dropped: the %s counter of B stayed at %d", DropTunnelPeer, before)
		}
		err := inNS(t, c.name, func() error {
			conn, err := net.Dial("udp4", netip.AddrPortFrom(s.b.underlay, 51820).String())
			if err != nil {
				return err
			}
			defer conn.Close()
			_, err = conn.Write(msg)
			return err
		})
		if err != nil {
			t.Fatalf("send from %s to B's WireGuard port: %v", c.name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The real peer still gets through.
	s.mustConnect(t, s.a1, s.b1, portDB, true)
}
