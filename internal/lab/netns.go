package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces are bind-mounted, as
// `ip netns` expects them.
const netnsDir = "/run/netns"

func namespaceExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// namespaceInode is the inode that identifies the namespace; processes in
// it show the same inode at /proc/<pid>/ns/net.
func namespaceInode(name string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(netnsDir, name), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// inNamespace runs fn on a thread moved into the named namespace, then
// moves the thread back (see nsrun for why moving back matters).
func inNamespace(name string, fn func() error) error {
	return nsrun.Do(filepath.Join(netnsDir, name), fn)
}

// createNamespace makes a named network namespace. netns.NewNamed enters
// the namespace it makes; nsrun.Run moves the thread back afterwards.
func createNamespace(name string) error {
	err := nsrun.Run(func() error {
		ns, err := netns.NewNamed(name)
		if err == nil {
			ns.Close()
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("lab: create namespace %s: %w", name, err)
	}
	return nil
}

// deleteNamespace removes a named namespace; a missing one is not an
// error. The namespace itself lives on while a process or mount holds it.
func deleteNamespace(name string) error {
	path := filepath.Join(netnsDir, name)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("lab: unmount namespace %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lab: remove namespace %s: %w", name, err)
	}
	return nil
}

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
	ns, err := netns.GetFromName(name)
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

// setSysctl writes a sysctl inside a namespace. /proc/sys/net follows the
// network namespace of the thread that opens it.
func setSysctl(namespace, key, value string) error {
	return inNamespace(namespace, func() error {
		path := "/proc/sys/" + filepath.Join(splitDots(key)...)
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("lab: sysctl %s in %s: %w", key, namespace, err)
		}
		return nil
	})
}

func splitDots(key string) []string {
	var out []string
	start := 0
	for i := 0; i < len(key); i++ {
		if key[i] == '.' {
			out = append(out, key[start:i])
			start = i + 1
		}
	}
	return append(out, key[start:])
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
