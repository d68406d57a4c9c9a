package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/corridor-dev/corridor/internal/compile"
)

// ensureVXLAN makes corv0 match d: created if missing, recreated only when
// an attribute that cannot change in place differs (VNI, port, local
// address, underlay device, learning), otherwise MTU, MAC and up state are
// set in place.
func (dp *Dataplane) ensureVXLAN(d *desired, under netlink.Link, underMTU int) (netlink.Link, error) {
	mtu := underMTU - vxlanOverhead
	if d.underlay.Is6() {
		mtu -= 20
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: VXLANName, MTU: mtu, HardwareAddr: d.vtepMAC},
		VxlanId:      compile.VXLANVNI,
		VtepDevIndex: under.Attrs().Index,
		SrcAddr:      ipOf(d.underlay),
		Port:         compile.VXLANPort,
		Learning:     false,
	}
	l, err := dp.nl.LinkByName(VXLANName)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		l = nil
	case err != nil:
		return nil, fmt.Errorf("look up %s: %w", VXLANName, err)
	}
	if l != nil {
		cur, ok := l.(*netlink.Vxlan)
		if !ok || cur.VxlanId != want.VxlanId || cur.Port != want.Port || cur.VtepDevIndex != want.VtepDevIndex ||
			!cur.SrcAddr.Equal(want.SrcAddr) || cur.Learning {
			if err := dp.nl.LinkDel(l); err != nil {
				return nil, fmt.Errorf("delete outdated %s: %w", VXLANName, err)
			}
			dp.changed("deleted outdated VXLAN device", "name", VXLANName)
			l = nil
		}
	}
	if l == nil {
		if err := dp.nl.LinkAdd(want); err != nil {
			return nil, fmt.Errorf("create %s: %w", VXLANName, err)
		}
		dp.changed("created VXLAN device", "name", VXLANName, "vni", want.VxlanId, "local", d.underlay, "dev", under.Attrs().Name, "mtu", mtu)
		if l, err = dp.nl.LinkByName(VXLANName); err != nil {
			return nil, fmt.Errorf("look up %s: %w", VXLANName, err)
		}
	}
	a := l.Attrs()
	if a.MTU != mtu {
		if err := dp.nl.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("set %s MTU %d: %w", VXLANName, mtu, err)
		}
		dp.changed("set MTU", "name", VXLANName, "mtu", mtu)
	}
	if !bytes.Equal(a.HardwareAddr, d.vtepMAC) {
		if err := dp.nl.LinkSetHardwareAddr(l, d.vtepMAC); err != nil {
			return nil, fmt.Errorf("set %s MAC %s: %w", VXLANName, d.vtepMAC, err)
		}
		dp.changed("set MAC", "name", VXLANName, "mac", d.vtepMAC)
	}
	if a.Flags&net.FlagUp == 0 {
		if err := dp.nl.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set %s up: %w", VXLANName, err)
		}
		dp.changed("set link up", "name", VXLANName)
	}
	return l, nil
}

// syncFDB makes corv0's forwarding database hold exactly one entry per
// remote VTEP MAC, pointing at that host's underlay address. There is no
// all-zeros flood entry: with it every unicast frame would go to every
// remote host.
func (dp *Dataplane) syncFDB(d *desired, vx netlink.Link) error {
	idx := vx.Attrs().Index
	cur, err := retryDump(func() ([]netlink.Neigh, error) { return dp.nl.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return fmt.Errorf("list %s FDB: %w", VXLANName, err)
	}
	have := map[string]bool{}
	for _, n := range cur {
		if n.IP == nil || n.IP.IsUnspecified() {
			// Entries without a remote come from the device's own
			// address lists; the kernel owns them.
			continue
		}
		ip, _ := netip.AddrFromSlice(n.IP)
		mac := n.HardwareAddr.String()
		if want, ok := d.fdb[mac]; ok && want == ip.Unmap() {
			have[mac] = true
			continue
		}
		del := n
		if err := dp.nl.NeighDel(&del); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete %s FDB entry %s dst %s: %w", VXLANName, mac, n.IP, err)
		}
		dp.changed("deleted FDB entry", "dev", VXLANName, "mac", mac, "dst", n.IP)
	}
	for mac, under := range d.fdb {
		if have[mac] {
			continue
		}
		hw, _ := net.ParseMAC(mac)
		n := &netlink.Neigh{
			LinkIndex:    idx,
			Family:       unix.AF_BRIDGE,
			State:        netlink.NUD_PERMANENT,
			Flags:        netlink.NTF_SELF,
			IP:           ipOf(under),
			HardwareAddr: hw,
		}
		if err := dp.nl.NeighAppend(n); err != nil {
			return fmt.Errorf("add %s FDB entry %s dst %s: %w", VXLANName, mac, under, err)
		}
		dp.changed("added FDB entry", "dev", VXLANName, "mac", mac, "dst", under)
	}
	return nil
}

// syncNeighbours makes corv0's ARP table hold a permanent entry for each
// remote guest reached in plain, with its host's corv0 MAC, and nothing
// else.
func (dp *Dataplane) syncNeighbours(d *desired, vx netlink.Link) error {
	idx := vx.Attrs().Index
	cur, err := retryDump(func() ([]netlink.Neigh, error) { return dp.nl.NeighList(idx, unix.AF_INET) })
	if err != nil {
		return fmt.Errorf("list %s neighbours: %w", VXLANName, err)
	}
	ok := map[netip.Addr]bool{}
	for _, n := range cur {
		ip, _ := netip.AddrFromSlice(n.IP)
		ip = ip.Unmap()
		if mac, want := d.neigh[ip]; want && bytes.Equal(mac, n.HardwareAddr) && n.State&netlink.NUD_PERMANENT != 0 {
			ok[ip] = true
			continue
		}
		if _, want := d.neigh[ip]; want {
			continue // replaced below
		}
		del := n
		if err := dp.nl.NeighDel(&del); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete %s neighbour %s: %w", VXLANName, ip, err)
		}
		dp.changed("deleted neighbour", "dev", VXLANName, "ip", ip)
	}
	for ip, mac := range d.neigh {
		if ok[ip] {
			continue
		}
		n := &netlink.Neigh{
			LinkIndex:    idx,
			Family:       unix.AF_INET,
			State:        netlink.NUD_PERMANENT,
			IP:           ipOf(ip),
			HardwareAddr: mac,
		}
		if err := dp.nl.NeighSet(n); err != nil {
			return fmt.Errorf("set %s neighbour %s lladdr %s: %w", VXLANName, ip, mac, err)
		}
		dp.changed("set neighbour", "dev", VXLANName, "ip", ip, "mac", mac)
	}
	return nil
}

// GatewayAddr is the guests' default gateway (their default route is "via
// 169.254.1.1 onlink"). The host holds it as a /32 on corv0 so that it
// answers the guests' ARP requests for it on every guest interface:
// proxy_arp alone answers only when the host has a route to 169.254.1.1
// through another interface (a default route, which a host need not have).
var GatewayAddr = netip.MustParseAddr("169.254.1.1")

// ensureGatewayAddr puts GatewayAddr/32 on corv0 if missing.
func (dp *Dataplane) ensureGatewayAddr(vx netlink.Link) error {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return dp.nl.AddrList(vx, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list %s addresses: %w", VXLANName, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == GatewayAddr {
			return nil
		}
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ipOf(GatewayAddr), Mask: net.CIDRMask(32, 32)}, Scope: int(netlink.SCOPE_LINK)}
	if err := dp.nl.AddrAdd(vx, a); err != nil {
		return fmt.Errorf("add %s/32 to %s: %w", GatewayAddr, VXLANName, err)
	}
	dp.changed("added guest gateway address", "dev", VXLANName, "addr", GatewayAddr)
	return nil
}
