package guest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"

	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Fixed parts of every guest's network, whatever its runtime.
const (
	// GatewayAddr is the guest's next hop: not an address of the host, it
	// is answered by the host end's proxy ARP (and pinned in the guest's
	// neighbour table), so guests need no per-host gateway address.
	GatewayAddr = "169.254.1.1"
	// DefaultMTU leaves room for the WireGuard (and VXLAN) encapsulation
	// on a 1500-byte underlay.
	DefaultMTU = 1420
)

// HostNet is the host network namespace the guests of one agent hang off.
// In production it is the root namespace; in the lab every simulated
// server is a namespace of its own, so nothing here assumes the caller's.
// Both the netns runtime (veth) and a VM runtime (tap) use AttachHost for
// the host side of a guest interface.
type HostNet struct {
	ns netns.NsHandle
	h  *netlink.Handle
}

// OpenHostNet opens the network namespace at path ("" means the calling
// thread's namespace, usually the root one).
func OpenHostNet(path string) (*HostNet, error) {
	var ns netns.NsHandle
	var err error
	if path == "" {
		ns, err = currentNetns()
	} else {
		ns, err = netns.GetFromPath(path)
	}
	if err != nil {
		return nil, fmt.Errorf("guest: open host netns %q: %w", path, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("guest: netlink in host netns %q: %w", path, err)
	}
	return &HostNet{ns: ns, h: h}, nil
}

// currentNetns opens the namespace of this thread; locked so that the
// thread we look at is the one we run on.
func currentNetns() (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return netns.Get()
}

// Handle is the netlink handle bound to the host namespace.
func (n *HostNet) Handle() *netlink.Handle { return n.h }

// NS is the host namespace handle (owned by n; do not close).
func (n *HostNet) NS() netns.NsHandle { return n.ns }

// Close releases the namespace handle and the netlink socket.
func (n *HostNet) Close() error {
	n.h.Close()
	return n.ns.Close()
}

// AttachHost finishes the host end of a guest interface (veth or tap)
// named ifname: link up, proxy ARP on (so the guest's gateway 169.254.1.1
// resolves to the host whatever the host's own addresses), and the /32
// route to the guest's address through it. Other /32 link routes through
// ifname, left by an earlier address, are removed. Idempotent.
func (n *HostNet) AttachHost(ifname string, addr netip.Addr) error {
	// A namespace without any IPv4 address has no local routing table,
	// and ARP then takes every neighbour for a broadcast address: frames
	// to the guest go out to ff:ff:ff:ff:ff:ff and its TCP drops them.
	// lo up brings 127.0.0.1 and the table (real hosts have it anyway;
	// a bare lab namespace may not).
	lo, err := n.h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("guest: host lo: %w", err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := n.h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("guest: set host lo up: %w", err)
		}
	}
	link, err := n.h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("guest: host interface %s: %w", ifname, err)
	}
	if err := n.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("guest: set %s up: %w", ifname, err)
	}
	// An entry made while the table was missing stays NOARP: drop it.
	if neighs, err := n.h.NeighList(link.Attrs().Index, familyOf(addr)); err == nil {
		for _, nb := range neighs {
			if nb.State&netlink.NUD_NOARP != 0 && nb.IP.Equal(addr.AsSlice()) {
				_ = n.h.NeighDel(&nb)
			}
		}
	}
	if err := n.Sysctl(filepath.Join("net/ipv4/conf", ifname, "proxy_arp"), "1"); err != nil {
		return err
	}
	dst := netip.PrefixFrom(addr, addr.BitLen())
	want := hostRoute(link.Attrs().Index, dst)
	if err := n.h.RouteReplace(want); err != nil {
		return fmt.Errorf("guest: route %s dev %s: %w", dst, ifname, err)
	}
	routes, err := n.h.RouteListFiltered(familyOf(addr), &netlink.Route{LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("guest: list routes of %s: %w", ifname, err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Scope != netlink.SCOPE_LINK {
			continue
		}
		ones, bits := r.Dst.Mask.Size()
		if ones != bits || r.Dst.IP.Equal(want.Dst.IP) {
			continue
		}
		if err := n.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("guest: delete stale route %s dev %s: %w", r.Dst, ifname, err)
		}
	}
	return nil
}

// link finds the host interface ifname: nil and no error when there is
// none.
func (n *HostNet) link(ifname string) (netlink.Link, error) {
	link, err := n.h.LinkByName(ifname)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("guest: host interface %s: %w", ifname, err)
	}
	return link, nil
}

// DetachHost removes the route to addr through ifname. Deleting the
// interface would remove it too; this is for a runtime whose interface
// outlives the route. Missing routes and interfaces are not errors.
func (n *HostNet) DetachHost(ifname string, addr netip.Addr) error {
	link, err := n.link(ifname)
	if link == nil {
		return err
	}
	r := hostRoute(link.Attrs().Index, netip.PrefixFrom(addr, addr.BitLen()))
	if err := n.h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("guest: delete route %s dev %s: %w", addr, ifname, err)
	}
	return nil
}

// DeleteLink deletes the host interface ifname if it exists.
func (n *HostNet) DeleteLink(ifname string) error {
	link, err := n.link(ifname)
	if link == nil {
		return err
	}
	if err := n.h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("guest: delete %s: %w", ifname, err)
	}
	return nil
}

// Sysctl writes value to /proc/sys/<key> in the host namespace. /proc/sys/net
// belongs to the namespace of the thread that opens it, so the write
// happens on a locked thread moved into the namespace.
func (n *HostNet) Sysctl(key, value string) error {
	if err := hostns.Sysctl(n.ns, key, value); err != nil {
		return fmt.Errorf("guest: host %w", err)
	}
	return nil
}

func hostRoute(index int, dst netip.Prefix) *netlink.Route {
	return &netlink.Route{
		LinkIndex: index,
		Dst:       PrefixIPNet(dst),
		Scope:     netlink.SCOPE_LINK,
		Table:     unix.RT_TABLE_MAIN,
	}
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// PrefixIPNet is p as netlink takes it.
func PrefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
