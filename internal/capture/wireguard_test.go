package capture

import (
	"net/netip"
	"testing"
)

// frame builds an Ethernet/IPv4/UDP frame from src to dst with payload.
func udpFrame(src, dst netip.Addr, payload []byte) []byte {
	f := make([]byte, 14+20+8, 14+20+8+len(payload))
	f[12], f[13] = 0x08, 0x00
	ip := f[14:]
	ip[0] = 0x45
	ip[9] = 17
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	return append(f, payload...)
}

func TestWireGuardPeer(t *testing.T) {
	a, b := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	data := append([]byte{4, 0, 0, 0}, make([]byte, 60)...)
	if p, ok := wireGuardPeer(udpFrame(a, b, data), true); !ok || p != b {
		t.Fatalf("outgoing transport data: %v %v, want %v", p, ok, b)
	}
	if p, ok := wireGuardPeer(udpFrame(b, a, data), false); !ok || p != b {
		t.Fatalf("incoming transport data: %v %v, want %v", p, ok, b)
	}
	handshake := append([]byte{1, 0, 0, 0}, make([]byte, 144)...)
	for name, f := range map[string][]byte{
		"handshake":  udpFrame(a, b, handshake),
		"short":      udpFrame(a, b, data[:20]),
		"plain text": udpFrame(a, b, []byte("corridor-verify-0123456789abcdef0123456789abcdef")),
		"truncated":  udpFrame(a, b, data)[:30],
	} {
		if _, ok := wireGuardPeer(f, true); ok {
			t.Errorf("%s counted as WireGuard data", name)
		}
	}
	frag := udpFrame(a, b, data)
	frag[14+7] = 8 // fragment offset 64
	if _, ok := wireGuardPeer(frag, true); ok {
		t.Error("a later fragment counted as WireGuard data")
	}
}
