// Package capture watches the frames crossing one network interface, inside
// a given network namespace, for short marker byte strings, without
// libpcap: an AF_PACKET raw socket bound to the interface, read from Go.
//
// It exists for `corridor verify` and the lab: send a marker through a path,
// and look for it in clear on the underlay. Finding the marker on the
// underlay of an encrypted path is a failure; finding it on a guest's veth
// proves the traffic went there.
//
// What it sees: every frame the interface sends or receives (both
// directions), as the kernel hands them to packet sockets, before any
// firewall on receive and after it on send. On veth the frames of a TCP
// stream may come as GSO/GRO super-frames of up to 64 KiB; they are read
// whole.
//
// What it keeps: nothing but counters. Each frame is scanned for every
// watched marker and dropped. A marker split across two frames (it straddles
// a TCP segment boundary) is not found; markers are short (tens of bytes)
// and sent in one write at the start of a connection or in one datagram, so
// in practice they sit in one frame. Headers are scanned too, so a marker
// should be long and random enough not to occur there by chance.
//
// When the kernel had to drop frames because the reader fell behind,
// Result.Dropped says so: a negative answer ("the marker was not seen") is
// then not proof, and a caller checking for absence should treat it as
// inconclusive, as it should a capture that saw no packets at all.
package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/corridor-dev/corridor/internal/nsrun"
	"golang.org/x/sys/unix"
)

// ErrNotWatched is returned when asking about a marker that was never
// given to Start or Watch: the capture cannot answer for it, and "not
// seen" would be a dangerous default for a check of absence.
var ErrNotWatched = errors.New("capture: marker is not watched")

// bufSize bounds one read: a GSO super-frame is at most 64 KiB, and BIG TCP
// can make larger ones; the frame's real length is counted either way.
const bufSize = 256 << 10

// settle is how long Stop keeps reading before it drains the queue, so
// that frames still between the device and the socket are counted.
const settle = 20 * time.Millisecond

// Result is what a capture saw.
type Result struct {
	Interface string `json:"interface"`
	Netns     string `json:"netns,omitempty"`
	// Packets and Bytes count frames in both directions (Bytes their full
	// length, even when a read was cut short).
	Packets  uint64 `json:"packets"`
	Bytes    uint64 `json:"bytes"`
	Incoming uint64 `json:"incoming"` // frames received by the interface
	Outgoing uint64 `json:"outgoing"` // frames sent by the interface
	// Truncated counts frames longer than the read buffer: only their head
	// was scanned.
	Truncated uint64 `json:"truncated,omitempty"`
	// Dropped counts frames the kernel dropped because the socket's queue
	// was full; they were not scanned.
	Dropped uint64 `json:"dropped,omitempty"`
	// Matches counts, per watched marker, the frames that held it.
	Matches map[string]uint64 `json:"matches"`
	// WireGuard counts WireGuard transport-data frames (IPv4 UDP whose
	// payload starts with message type 4) per remote address: the
	// destination of a frame the interface sent, the source of one it
	// received. It is the evidence that a path was encrypted: traffic
	// that left without its marker in clear but also without WireGuard
	// frames to the peer proves nothing.
	WireGuard map[netip.Addr]uint64 `json:"wireGuard,omitempty"`
}

// Contains reports whether a watched marker was seen; an unwatched marker
// is an error, never a silent "no".
func (r Result) Contains(marker []byte) (bool, error) {
	n, ok := r.Matches[string(marker)]
	if !ok {
		return false, fmt.Errorf("%w: %q", ErrNotWatched, marker)
	}
	return n > 0, nil
}

// Capture is a running capture. Its methods are safe for concurrent use.
type Capture struct {
	f       *os.File
	ifname  string
	netns   string
	done    chan struct{} // closed when the reader has exited
	once    sync.Once
	readErr error // set by the reader before done closes

	mu      sync.RWMutex
	markers []watched
	seen    chan struct{} // closed and renewed at each new match, for WaitFor

	packets, bytes, in, out, truncated atomic.Uint64
	dropped                            atomic.Uint64
	wgMu                               sync.Mutex
	wg                                 map[netip.Addr]uint64
	result                             Result
	stopErr                            error
}

type watched struct {
	marker []byte
	count  *atomic.Uint64
}

// Start opens a packet socket on interface ifname of the network namespace
// at netnsPath ("/var/run/netns/NAME" or "/proc/PID/ns/net"; "" for the
// caller's own) and starts scanning for the given markers (more may be
// added with Watch). It returns once the socket is bound: every frame after
// that is seen. The capture ends at Stop, or when ctx is done.
func Start(ctx context.Context, netnsPath, ifname string, markers ...[]byte) (*Capture, error) {
	if ifname == "" {
		return nil, errors.New("capture: interface name is empty")
	}
	var fd int
	err := nsrun.Do(netnsPath, func() error {
		var err error
		fd, err = openBound(ifname)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %s (netns %q): %w", ifname, netnsPath, err)
	}
	c := &Capture{
		f:      os.NewFile(uintptr(fd), "packet:"+ifname),
		ifname: ifname,
		netns:  netnsPath,
		done:   make(chan struct{}),
		seen:   make(chan struct{}),
	}
	for _, m := range markers {
		if err := c.Watch(m); err != nil {
			c.f.Close()
			return nil, err
		}
	}
	go c.read()
	context.AfterFunc(ctx, func() { c.Stop() })
	return c, nil
}

// openBound opens a packet socket bound to ifname, in the calling thread's
// namespace. The socket is opened for no protocol and only then bound to
// ETH_P_ALL on the one interface, so that it never queues frames of other
// interfaces.
func openBound(ifname string) (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("packet socket (needs CAP_NET_RAW): %w", err)
	}
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("interface name %q: %w", ifname, err)
	}
	// The ioctl resolves the name in the socket's own namespace, unlike
	// /sys/class/net, which shows the namespace sysfs was mounted from.
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("interface %q: %w", ifname, err)
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: int(ifr.Uint32())}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind to %q: %w", ifname, err)
	}
	// A deep queue rides out bursts (a TCP stream at full speed) while the
	// reader scans; FORCE works as root past net.core.rmem_max.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Watch adds a marker to look for in frames from now on. Markers must be
// non-empty; adding one twice is harmless.
func (c *Capture) Watch(marker []byte) error {
	if len(marker) == 0 {
		return errors.New("capture: marker is empty")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.markers {
		if bytes.Equal(w.marker, marker) {
			return nil
		}
	}
	c.markers = append(c.markers, watched{marker: bytes.Clone(marker), count: new(atomic.Uint64)})
	return nil
}

// Seen reports whether a watched marker has been seen so far.
func (c *Capture) Seen(marker []byte) (bool, error) {
	return c.Stats().Contains(marker)
}

// WaitFor returns nil as soon as marker has been seen, or an error when
// ctx ends first, the capture stops, or the marker is not watched.
func (c *Capture) WaitFor(ctx context.Context, marker []byte) error {
	for {
		c.mu.RLock()
		seen := c.seen
		c.mu.RUnlock()
		ok, err := c.Seen(marker)
		if err != nil || ok {
			return err
		}
		select {
		case <-seen:
		case <-ctx.Done():
			return fmt.Errorf("capture: marker %q not seen on %s: %w", marker, c.ifname, ctx.Err())
		case <-c.done:
			if ok, err := c.Seen(marker); err != nil || ok {
				return err
			}
			return fmt.Errorf("capture: marker %q not seen on %s before the capture ended", marker, c.ifname)
		}
	}
}

// Stats returns the counters so far.
func (c *Capture) Stats() Result {
	r := Result{
		Interface: c.ifname,
		Netns:     c.netns,
		Packets:   c.packets.Load(),
		Bytes:     c.bytes.Load(),
		Incoming:  c.in.Load(),
		Outgoing:  c.out.Load(),
		Truncated: c.truncated.Load(),
		Dropped:   c.dropped.Load(),
	}
	c.wgMu.Lock()
	if len(c.wg) > 0 {
		r.WireGuard = maps.Clone(c.wg)
	}
	c.wgMu.Unlock()
	c.mu.RLock()
	r.Matches = make(map[string]uint64, len(c.markers))
	for _, w := range c.markers {
		r.Matches[string(w.marker)] = w.count.Load()
	}
	c.mu.RUnlock()
	return r
}

// Stop ends the capture and returns what it saw. Frames sent before Stop is
// called are counted: it reads on for a short settling time (20 ms), then
// drains what the socket still holds. Calling Stop again returns the same.
func (c *Capture) Stop() (Result, error) {
	c.once.Do(func() {
		c.f.SetReadDeadline(time.Now().Add(settle))
		<-c.done
		c.collectDrops()
		c.stopErr = c.readErr
		if err := c.f.Close(); err != nil && c.stopErr == nil {
			c.stopErr = fmt.Errorf("capture: close: %w", err)
		}
		c.result = c.Stats()
	})
	return c.result, c.stopErr
}

// read scans frames until Stop's deadline passes, then drains the queue.
func (c *Capture) read() {
	defer close(c.done)
	rc, err := c.f.SyscallConn()
	if err != nil {
		c.readErr = fmt.Errorf("capture: %w", err)
		return
	}
	buf := make([]byte, bufSize)
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			break // Stop's deadline, or the file was closed
		}
		if rerr != nil {
			if rerr == unix.EINTR {
				continue
			}
			c.readErr = fmt.Errorf("capture: read %s: %w", c.ifname, rerr)
			return
		}
		c.frame(buf, n, from)
		if c.collectCheck() {
			c.collectDrops()
		}
	}
	// Drain, without waiting, what is already queued; bounded in time,
	// since under a steady stream the queue never empties.
	limit := time.Now().Add(100 * time.Millisecond)
	rc.Control(func(fd uintptr) {
		for time.Now().Before(limit) {
			n, from, err := unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			c.frame(buf, n, from)
		}
	})
}

// collectCheck asks for the kernel's drop counter now and then, so that
// Stats shows drops while the capture runs.
func (c *Capture) collectCheck() bool { return c.packets.Load()%1024 == 0 }

// collectDrops adds the kernel's drop count since the last call (reading
// PACKET_STATISTICS resets it).
func (c *Capture) collectDrops() {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if st, err := unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
			c.dropped.Add(uint64(st.Drops))
		}
	})
}

// frame counts and scans one frame of real length n (buf holds at most
// len(buf) of it).
func (c *Capture) frame(buf []byte, n int, from unix.Sockaddr) {
	c.packets.Add(1)
	c.bytes.Add(uint64(n))
	outgoing := false
	if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
		c.out.Add(1)
		outgoing = true
	} else {
		c.in.Add(1)
	}
	if n > len(buf) {
		c.truncated.Add(1)
		n = len(buf)
	}
	if peer, ok := wireGuardPeer(buf[:n], outgoing); ok {
		c.wgMu.Lock()
		if c.wg == nil {
			c.wg = map[netip.Addr]uint64{}
		}
		c.wg[peer]++
		c.wgMu.Unlock()
	}
	c.scan(buf[:n])
}

// wireGuardPeer reports whether an Ethernet frame is a WireGuard
// transport-data message over IPv4 UDP, and the remote address: the
// destination of an outgoing frame, the source of an incoming one.
func wireGuardPeer(f []byte, outgoing bool) (netip.Addr, bool) {
	const eth = 14
	if len(f) < eth+20 || f[12] != 0x08 || f[13] != 0x00 {
		return netip.Addr{}, false
	}
	ip := f[eth:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || ip[9] != unix.IPPROTO_UDP || len(ip) < ihl+8+32 {
		return netip.Addr{}, false
	}
	// A fragment other than the first has no UDP header.
	if off := uint16(ip[6]&0x1f)<<8 | uint16(ip[7]); off != 0 {
		return netip.Addr{}, false
	}
	// Transport data: type 4, three reserved zero bytes, receiver index,
	// counter, then at least the 16-byte authentication tag.
	p := ip[ihl+8:]
	if p[0] != 4 || p[1] != 0 || p[2] != 0 || p[3] != 0 {
		return netip.Addr{}, false
	}
	if outgoing {
		return netip.AddrFrom4([4]byte(ip[16:20])), true
	}
	return netip.AddrFrom4([4]byte(ip[12:16])), true
}

// scan looks for every watched marker in one frame.
func (c *Capture) scan(frame []byte) {
	matched := false
	c.mu.RLock()
	for _, w := range c.markers {
		if bytes.Contains(frame, w.marker) {
			w.count.Add(1)
			matched = true
		}
	}
	c.mu.RUnlock()
	if matched {
		c.mu.Lock()
		close(c.seen)
		c.seen = make(chan struct{})
		c.mu.Unlock()
	}
}
