package agent_test

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// testNetns makes a network namespace of this test (testnet.Namespaces)
// and a netlink handle in it; both go away when the test ends.
func testNetns(t *testing.T, suffix string) (*netlink.Handle, string) {
	t.Helper()
	name := testnet.Namespaces(t, "ag", suffix)[0]
	return testnet.Netlink(t, name), testnet.Path(name)
}

func addVeth(t *testing.T, h *netlink.Handle, name, peer, cidr string) netlink.Link {
	t.Helper()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}); err != nil {
		t.Fatalf("veth %s: %v", name, err)
	}
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{name, peer} {
		l, _ := h.LinkByName(n)
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	if cidr != "" {
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(link, a); err != nil {
			t.Fatal(err)
		}
	}
	return link
}

func TestUnderlayAddressAndControlRoute(t *testing.T) {
	h, _ := testNetns(t, "ul")
	// No default route yet.
	if _, _, err := agent.UnderlayAddr(h, ""); err == nil || !strings.Contains(err.Error(), "no default route") {
		t.Fatalf("without a default route: %v", err)
	}
	eth := addVeth(t, h, "coreth0", "coreth0p", "198.18.5.1/24")
	tun := addVeth(t, h, "corw0", "corw0p", "")
	gw := net.ParseIP("198.18.5.254")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw}); err != nil {
		t.Fatalf("default route: %v", err)
	}

	ifname, addr, err := agent.UnderlayAddr(h, "")
	if err != nil || ifname != "coreth0" || addr != netip.MustParseAddr("198.18.5.1") {
		t.Fatalf("UnderlayAddr = %s %s %v, want coreth0 198.18.5.1", ifname, addr, err)
	}
	if _, _, err := agent.UnderlayAddr(h, "corw0"); err == nil || !strings.Contains(err.Error(), "no global address") {
		t.Fatalf("UnderlayAddr(corw0) = %v, want no global address", err)
	}
	if name, err := agent.InterfaceOf(h, netip.MustParseAddr("198.18.5.1")); err != nil || name != "coreth0" {
		t.Fatalf("InterfaceOf = %s %v", name, err)
	}
	if _, err := agent.InterfaceOf(h, netip.MustParseAddr("198.18.5.9")); err == nil {
		t.Fatal("InterfaceOf found an address nobody holds")
	}

	// The server reached by the underlay: fine.
	tunnels := []string{"corw0", "corv0"}
	server := netip.MustParseAddr("198.18.7.7")
	if err := agent.CheckControlRoute(h, []netip.Addr{server}, tunnels); err != nil {
		t.Fatalf("underlay route refused: %v", err)
	}
	// Someone routes the server into the tunnel: refused.
	_, dst, _ := net.ParseCIDR("198.18.7.7/32")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: tun.Attrs().Index, Dst: dst}); err != nil {
		t.Fatal(err)
	}
	err = agent.CheckControlRoute(h, []netip.Addr{server}, tunnels)
	if err == nil || !strings.Contains(err.Error(), "goes through corw0") {
		t.Fatalf("tunnel route: %v, want refusal", err)
	}
}
