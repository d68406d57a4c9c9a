package nsguest

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/hostns"
)

// GuestIf is the guest's interface name.
const GuestIf = "eth0"

// ensureNetwork creates or repairs the guest's netns, veth pair,
// addresses and routes, on both sides.
func (r *Runtime) ensureNetwork(g compile.Guest) error {
	ns, err := hostns.Ensure(r.netnsName(g.Task))
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := setGuestSysctls(ns); err != nil {
		return err
	}
	gh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in guest netns: %w", err)
	}
	defer gh.Close()
	hh := r.host.Handle()

	if !r.vethIntact(gh, ns, g.HostIf) {
		if err := r.host.DeleteLink(g.HostIf); err != nil {
			return err
		}
		if l, err := gh.LinkByName(GuestIf); err == nil {
			if err := gh.LinkDel(l); err != nil {
				return fmt.Errorf("delete stale %s in guest: %w", GuestIf, err)
			}
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: g.HostIf, MTU: r.cfg.MTU},
			PeerName:      GuestIf,
			PeerNamespace: netlink.NsFd(int(ns)),
		}
		if err := hh.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s: %w", g.HostIf, err)
		}
	}
	hostLink, err := hh.LinkByName(g.HostIf)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", g.HostIf, err)
	}
	if hostLink.Attrs().MTU != r.cfg.MTU {
		if err := hh.LinkSetMTU(hostLink, r.cfg.MTU); err != nil {
			return fmt.Errorf("set mtu of %s: %w", g.HostIf, err)
		}
	}
	if err := configureGuest(gh, g.Address, r.cfg.MTU, hostLink.Attrs().HardwareAddr); err != nil {
		return err
	}
	return r.host.AttachHost(g.HostIf, g.Address)
}

// vethIntact tells whether host end hostIf and the guest's eth0 are the
// two ends of one veth pair. Interface indexes alone do not prove it
// (every guest's eth0 tends to be index 2), so the peers' namespace IDs
// are compared too.
func (r *Runtime) vethIntact(gh *netlink.Handle, guestNS netns.NsHandle, hostIf string) bool {
	hh := r.host.Handle()
	hl, err := hh.LinkByName(hostIf)
	if err != nil || hl.Type() != "veth" {
		return false
	}
	gl, err := gh.LinkByName(GuestIf)
	if err != nil || gl.Type() != "veth" {
		return false
	}
	if hl.Attrs().ParentIndex != gl.Attrs().Index || gl.Attrs().ParentIndex != hl.Attrs().Index {
		return false
	}
	gid, err := hh.GetNetNsIdByFd(int(guestNS))
	if err != nil || gid < 0 || hl.Attrs().NetNsID != gid {
		return false
	}
	hid, err := gh.GetNetNsIdByFd(int(r.host.NS()))
	return err == nil && hid >= 0 && gl.Attrs().NetNsID == hid
}

// configureGuest sets the inside of the guest: lo and eth0 up, only addr
// on eth0, the gateway's link route and neighbour entry, the default
// route.
func configureGuest(gh *netlink.Handle, addr netip.Addr, mtu int, hostMAC net.HardwareAddr) error {
	lo, err := gh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("guest lo: %w", err)
	}
	if err := gh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set guest lo up: %w", err)
	}
	eth, err := gh.LinkByName(GuestIf)
	if err != nil {
		return fmt.Errorf("guest %s: %w", GuestIf, err)
	}
	if eth.Attrs().MTU != mtu {
		if err := gh.LinkSetMTU(eth, mtu); err != nil {
			return fmt.Errorf("set mtu of guest %s: %w", GuestIf, err)
		}
	}
	if err := gh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set guest %s up: %w", GuestIf, err)
	}
	want := &netlink.Addr{IPNet: guest.PrefixIPNet(netip.PrefixFrom(addr, 32))}
	addrs, err := gh.AddrList(eth, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list guest addresses: %w", err)
	}
	for _, a := range addrs {
		if !a.IPNet.IP.Equal(want.IP) || a.IPNet.Mask.String() != want.Mask.String() {
			if err := gh.AddrDel(eth, &a); err != nil {
				return fmt.Errorf("delete stale guest address %s: %w", a.IPNet, err)
			}
		}
	}
	if err := gh.AddrReplace(eth, want); err != nil {
		return fmt.Errorf("add guest address %s: %w", want.IPNet, err)
	}
	gw := net.ParseIP(guest.GatewayAddr).To4()
	if err := gh.RouteReplace(&netlink.Route{
		LinkIndex: eth.Attrs().Index, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK,
	}); err != nil {
		return fmt.Errorf("guest route to %s: %w", guest.GatewayAddr, err)
	}
	// Pinned so that the guest does not depend on proxy ARP, which only
	// answers when the host has a route to 169.254.1.1 (a lab server
	// namespace may have no default route).
	if err := gh.NeighSet(&netlink.Neigh{
		LinkIndex: eth.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: gw, HardwareAddr: hostMAC,
	}); err != nil {
		return fmt.Errorf("guest neighbour %s: %w", guest.GatewayAddr, err)
	}
	if err := gh.RouteReplace(&netlink.Route{
		LinkIndex: eth.Attrs().Index, Gw: gw, Flags: int(netlink.FLAG_ONLINK),
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
	}); err != nil {
		return fmt.Errorf("guest default route: %w", err)
	}
	return nil
}
