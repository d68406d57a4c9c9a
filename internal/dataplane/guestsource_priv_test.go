package dataplane

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testGuestSource: the guest interfaces and corv0 skip the kernel's
// reverse-path lookup (accept_local=1, which takes effect where rp_filter
// is 0), and the prerouting check of a guest's source (guestSource)
// stands in for it. With rp_filter 0 on host A (the kernel then lets a
// packet with one of the host's own addresses as source through), a1
// sends a UDP datagram forged with A's underlay address and port as its
// source into an established UDP flow between two of A's own sockets: it
// must be dropped and counted as spoof, never delivered. Without the
// check (mutation guard guest-source) the host's socket receives it.
func testGuestSource(t *testing.T, s *scenario) {
	h, g := s.a, s.a1
	// The sysctls: the lookup is skipped on the guest's interface and on
	// corv0.
	for _, dev := range []string{g.hostIf, VXLANName} {
		if v := readSysctl(t, h, "net/ipv4/conf/"+dev+"/accept_local"); v != "1" {
			t.Errorf("%s: accept_local %q, want 1 (no reverse-path lookup per packet)", dev, v)
		}
	}

	// rp_filter 0 for the test ("all" and the interface: the kernel uses
	// the larger), back to strict at the end.
	for _, k := range []string{"all", g.hostIf} {
		key := "net/ipv4/conf/" + k + "/rp_filter"
		old := readSysctl(t, h, key)
		writeSysctl(t, h, key, "0")
		t.Cleanup(func() { writeSysctl(t, h, key, old) })
	}

	// Two UDP sockets of the host, on its underlay address, that have
	// exchanged a datagram each way: their flow is established in
	// conntrack.
	p1 := netip.AddrPortFrom(h.underlay, 40001)
	p2 := netip.AddrPortFrom(h.underlay, 40002)
	var c1, c2 *net.UDPConn
	if err := inNS(t, h.name, func() error {
		var err error
		if c1, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(p1), net.UDPAddrFromAddrPort(p2)); err != nil {
			return err
		}
		c2, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(p2), net.UDPAddrFromAddrPort(p1))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	defer c2.Close()
	buf := make([]byte, 1500)
	exchange := func(from, to *net.UDPConn, msg string) {
		t.Helper()
		if _, err := from.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		to.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := to.Read(buf)
		if err != nil || string(buf[:n]) != msg {
			t.Fatalf("host's own UDP exchange: %q, %v", buf[:n], err)
		}
	}
	exchange(c1, c2, "ping")
	exchange(c2, c1, "pong")

	// a1 forges p2 -> p1 until the spoof counter moves (dropped) or c1
	// reads the forged payload (delivered).
	before := h.dropCount(t, DropSpoof)
	forged := udpIPv4(p2, p1, []byte("forged by a guest"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		sendRawIPv4(t, g.ns, p1.Addr(), forged)
		c1.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := c1.Read(buf); err == nil {
			t.Fatalf("a datagram forged by guest %s with the host's address %s as source was delivered to the host's socket: %q", g.addr, p2, buf[:n])
		}
		if h.dropCount(t, DropSpoof) > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the forged datagram was neither delivered nor counted as spoof (counter %d)", before)
		}
	}
	// The host's flow still works.
	exchange(c2, c1, "still")
}

// readSysctl reads a sysctl (path under /proc/sys) in h's namespace.
func readSysctl(t *testing.T, h *host, key string) string {
	t.Helper()
	var v string
	if err := inNS(t, h.name, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", key))
		v = strings.TrimSpace(string(b))
		return err
	}); err != nil {
		t.Fatalf("read %s in %s: %v", key, h.name, err)
	}
	return v
}

// writeSysctl writes a sysctl in h's namespace.
func writeSysctl(t *testing.T, h *host, key, val string) {
	t.Helper()
	if err := inNS(t, h.name, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(val), 0o644)
	}); err != nil {
		t.Fatalf("write %s=%s in %s: %v", key, val, h.name, err)
	}
}

// udpIPv4 builds an IPv4/UDP packet (no UDP checksum; the kernel fills in
// the IP header's length and checksum for a raw socket).
func udpIPv4(src, dst netip.AddrPort, payload []byte) []byte {
	p := make([]byte, 20+8+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = unix.IPPROTO_UDP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[20:], src.Port())
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	return p
}

// sendRawIPv4 sends an IPv4 packet, header included, from namespace ns
// towards dst (routed there as usual).
func sendRawIPv4(t *testing.T, ns string, dst netip.Addr, pkt []byte) {
	t.Helper()
	if err := inNS(t, ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst.As4()})
	}); err != nil {
		t.Fatalf("send a raw packet from %s: %v", ns, err)
	}
}
