package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"

	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nsHandle is a netlink handle bound to a named namespace ("" is the root
// namespace, that is, the caller's).
type nsHandle struct {
	*netlink.Handle
	ns netns.NsHandle
}

func openNamespace(name string) (*nsHandle, error) {
	if name == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("lab: netlink: %w", err)
		}
		return &nsHandle{Handle: h, ns: netns.None()}, nil
	}
	ns, err := hostns.Open(name)
	if err != nil {
		return nil, fmt.Errorf("lab: namespace %s: %w", name, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("lab: netlink in namespace %s: %w", name, err)
	}
	return &nsHandle{Handle: h, ns: ns}, nil
}

func (h *nsHandle) Close() {
	h.Handle.Close()
	if h.ns.IsOpen() {
		h.ns.Close()
	}
}

// makeBridge makes the underlay bridge in h's namespace, up, with lo up.
func makeBridge(h *nsHandle, name string, mtu int) error {
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}}
	if err := h.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("lab: bridge %s: %w", name, err)
	}
	return linkUp(h, name)
}

// makeVeth makes a veth pair in h's namespace whose peer is created
// directly in peerNS under peerName (so the two names never meet in one
// namespace), and plugs the local end into the bridge.
func makeVeth(h *nsHandle, name, bridge string, peerNS *nsHandle, peerName string, mtu int) error {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name, MTU: mtu},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(peerNS.fd()),
	}
	if err := h.LinkAdd(v); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("lab: veth %s/%s: %w", name, peerName, err)
	}
	if bridge != "" {
		link, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("lab: veth %s: %w", name, err)
		}
		br, err := h.LinkByName(bridge)
		if err != nil {
			return fmt.Errorf("lab: bridge %s: %w", bridge, err)
		}
		if err := h.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("lab: plug %s into %s: %w", name, bridge, err)
		}
	}
	return linkUp(h, name)
}

// fd is the namespace's file descriptor; for the root namespace, that of
// this process's namespace.
func (h *nsHandle) fd() int {
	if h.ns.IsOpen() {
		return int(h.ns)
	}
	// The root handle: the namespace of a thread of ours that never
	// switched namespaces (threads that switch are never unlocked, so
	// they never run this goroutine).
	runtime.LockOSThread()
	ns, err := netns.Get()
	runtime.UnlockOSThread()
	if err != nil {
		return -1
	}
	h.ns = ns
	return int(ns)
}

// addAddress gives the link an address (idempotent) and sets it up.
func addAddress(h *nsHandle, link string, addr netip.Addr, subnet netip.Prefix) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("lab: link %s: %w", link, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)}}
	if err := h.AddrReplace(l, a); err != nil {
		return fmt.Errorf("lab: address %s on %s: %w", addr, link, err)
	}
	return linkUp(h, link)
}

func linkUp(h *nsHandle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("lab: link %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("lab: set %s up: %w", name, err)
	}
	return nil
}

// deleteRootLink removes a link of the root namespace; a missing link is
// not an error.
func deleteRootLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("lab: link %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("lab: delete link %s: %w", name, err)
	}
	return nil
}

func rootLinkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// setSysctl writes a sysctl inside a named namespace.
func setSysctl(namespace, key, value string) error {
	ns, err := hostns.Open(namespace)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	defer ns.Close()
	if err := hostns.Sysctl(ns, key, value); err != nil {
		return fmt.Errorf("lab: in %s: %w", namespace, err)
	}
	return nil
}

// rootOverlap returns the root-namespace address that lies in subnet, if
// any: a second lab (or anything else) on the same subnet would make the
// root link's route ambiguous.
func rootOverlap(subnet netip.Prefix) (string, bool) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", false
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), ones).Masked()
		if p.Overlaps(subnet) {
			return fmt.Sprintf("%s on %s", a.IPNet, a.Label), true
		}
	}
	return "", false
}

// ownNamespaceInode is the inode of this process's (root) namespace, read
// from a thread of ours rather than from /proc/self, which shows the main
// thread's namespace.
func ownNamespaceInode() (uint64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}
