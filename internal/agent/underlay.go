package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// UnderlayAddr finds the host's underlay interface and address: iface when
// named, else the interface holding the default route (IPv4 first). The
// address is the interface's first global unicast address, IPv4 first.
// h nil means the caller's network namespace.
func UnderlayAddr(h *netlink.Handle, iface string) (string, netip.Addr, error) {
	if h == nil {
		h = &netlink.Handle{}
	}
	var link netlink.Link
	var err error
	if iface != "" {
		link, err = h.LinkByName(iface)
		if err != nil {
			return "", netip.Addr{}, fmt.Errorf("underlay interface %q: %w", iface, err)
		}
	} else {
		link, err = defaultRouteLink(h)
		if err != nil {
			return "", netip.Addr{}, err
		}
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return "", netip.Addr{}, fmt.Errorf("addresses of %s: %w", link.Attrs().Name, err)
	}
	var v6 netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.Scope != unix.RT_SCOPE_UNIVERSE || !ip.Unmap().IsGlobalUnicast() {
			continue
		}
		ip = ip.Unmap()
		if ip.Is4() {
			return link.Attrs().Name, ip, nil
		}
		if !v6.IsValid() {
			v6 = ip
		}
	}
	if v6.IsValid() {
		return link.Attrs().Name, v6, nil
	}
	return "", netip.Addr{}, fmt.Errorf("interface %s has no global address: give --address or --underlay-iface", link.Attrs().Name)
}

// InterfaceOf names the interface that holds addr.
func InterfaceOf(h *netlink.Handle, addr netip.Addr) (string, error) {
	if h == nil {
		h = &netlink.Handle{}
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return "", fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			link, err := h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return "", fmt.Errorf("interface of %s: %w", addr, err)
			}
			return link.Attrs().Name, nil
		}
	}
	return "", fmt.Errorf("address %s is on no interface of this host", addr)
}

func defaultRouteLink(h *netlink.Handle) (netlink.Link, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			idx := r.LinkIndex
			if idx == 0 && len(r.MultiPath) > 0 {
				idx = r.MultiPath[0].LinkIndex
			}
			if idx == 0 {
				continue
			}
			link, err := h.LinkByIndex(idx)
			if err != nil {
				return nil, fmt.Errorf("default route interface: %w", err)
			}
			return link, nil
		}
	}
	return nil, errors.New("no default route: give --address or --underlay-iface")
}

// CheckControlRoute fails when the kernel would send any of the server's
// addresses through one of the tunnel devices: the control channel must
// run on the underlay, or losing a tunnel would cut the agent off from the
// server that could repair it.
func CheckControlRoute(h *netlink.Handle, servers []netip.Addr, tunnels []string) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	for _, s := range servers {
		routes, err := h.RouteGet(net.IP(s.AsSlice()))
		if err != nil {
			return fmt.Errorf("route to the server %s: %w", s, err)
		}
		if len(routes) == 0 {
			return fmt.Errorf("no route to the server %s", s)
		}
		link, err := h.LinkByIndex(routes[0].LinkIndex)
		if err != nil {
			return fmt.Errorf("route to the server %s: interface %d: %w", s, routes[0].LinkIndex, err)
		}
		if name := link.Attrs().Name; slices.Contains(tunnels, name) {
			return fmt.Errorf("the route to the server %s goes through %s, a Corridor tunnel: the control channel must use the underlay (fix the routes, or give the server's underlay address)", s, name)
		}
	}
	return nil
}
