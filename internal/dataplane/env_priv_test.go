package dataplane

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/corridor-dev/corridor/internal/testnet"
)

func TestMain(m *testing.M) { os.Exit(testnet.Main(m)) }

var envSeq atomic.Int32

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// host is one simulated server: a namespace with an underlay veth and a
// data plane.
type host struct {
	name     string // namespace name
	nsPath   string
	underlay netip.Addr
	wgName   string
	vtepMAC  string
	stateDir string
	dp       *Dataplane
	guests   map[string]*guest
	cleanup  bool // a cleanup removing the data plane is registered
	// kernel: use kernel WireGuard (Config.Userspace false); the tests
	// run in user space unless they ask (see needKernelWireGuard).
	kernel bool
}

// guest is a guest namespace behind a host, set up as internal/guest does.
type guest struct {
	ns     string
	addr   netip.Addr
	hostIf string
	app    string
	class  string
}

type env struct {
	t    testing.TB
	id   string
	a, b *host
}

// newEnv makes two hosts joined by an underlay veth pair (198.18.<n>.1 and
// .2). Hosts use strict reverse-path filtering, as many distributions do.
func newEnv(t testing.TB) *env {
	testnet.NeedRoot(t, "creates network namespaces")
	n := envSeq.Add(1)
	id := fmt.Sprintf("cortst-dp-%d-%d", os.Getpid(), n)
	e := &env{t: t, id: id}
	mk := func(side string, last byte) *host {
		h := &host{
			name:     id + side,
			underlay: netip.AddrFrom4([4]byte{198, 18, byte(n), last}),
			wgName:   fmt.Sprintf("corw%d%02d%s", os.Getpid()%10000000, n%100, side),
			vtepMAC:  fmt.Sprintf("02:c0:%02x:00:00:%02x", n, last),
			stateDir: t.TempDir(),
			guests:   map[string]*guest{},
		}
		h.nsPath = testnet.Path(h.name)
		run(t, "ip", "netns", "add", h.name)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", h.name).Run() })
		run(t, "ip", "-n", h.name, "link", "set", "lo", "up")
		run(t, "ip", "netns", "exec", h.name, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.rp_filter=1")
		return h
	}
	e.a, e.b = mk("a", 1), mk("b", 2)
	run(t, "ip", "-n", e.a.name, "link", "add", "coru0", "type", "veth", "peer", "name", "coru0", "netns", e.b.name)
	for _, h := range []*host{e.a, e.b} {
		run(t, "ip", "-n", h.name, "addr", "add", h.underlay.String()+"/24", "dev", "coru0")
		run(t, "ip", "-n", h.name, "link", "set", "coru0", "up")
		// A real server has a default route through its underlay: a
		// packet that escapes every guard leaves there in plain instead
		// of dying in the main table. The gateway is a permanent
		// neighbour whose MAC nobody owns, so what is sent to it crosses
		// the underlay (and is seen by captures and counters on coru0)
		// and is dropped by the other end.
		gw := netip.AddrFrom4([4]byte{198, 18, byte(n), 254}).String()
		run(t, "ip", "-n", h.name, "neigh", "replace", gw, "lladdr", testGatewayMAC, "dev", "coru0", "nud", "permanent")
		run(t, "ip", "-n", h.name, "route", "add", "default", "via", gw, "dev", "coru0")
	}
	return e
}

// testGatewayMAC is the test hosts' default gateway on the underlay: no
// interface has it.
const testGatewayMAC = "02:c0:ff:ff:ff:fe"

// addGuest makes a guest namespace behind h: eth0 with addr/32, default
// route via 169.254.1.1 onlink; on the host the veth HostIf and the route
// addr/32 dev HostIf.
func (e *env) addGuest(h *host, short, app, class string, addr string) *guest {
	t := e.t
	// HostIf need only be unique in the host's namespace.
	g := &guest{ns: e.id + short, addr: netip.MustParseAddr(addr), hostIf: "corg" + short, app: app, class: class}
	run(t, "ip", "netns", "add", g.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", g.ns).Run() })
	run(t, "ip", "-n", h.name, "link", "add", g.hostIf, "type", "veth", "peer", "name", "eth0", "netns", g.ns)
	run(t, "ip", "-n", g.ns, "link", "set", "lo", "up")
	run(t, "ip", "-n", g.ns, "addr", "add", addr+"/32", "dev", "eth0")
	run(t, "ip", "-n", g.ns, "link", "set", "eth0", "up")
	run(t, "ip", "-n", g.ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0", "onlink")
	run(t, "ip", "-n", h.name, "link", "set", g.hostIf, "up")
	run(t, "ip", "-n", h.name, "route", "add", addr+"/32", "dev", g.hostIf)
	h.guests[short] = g
	return g
}

func (h *host) open(t testing.TB) {
	t.Helper()
	dp, err := New(Config{
		NetNS:         h.nsPath,
		StateDir:      h.stateDir,
		WireGuardName: h.wgName,
		Binary:        testnet.Binary(t, "datapath wireguard"),
		Userspace:     !h.kernel,
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("New(%s): %v", h.name, err)
	}
	h.dp = dp
	if h.cleanup {
		return
	}
	h.cleanup = true
	t.Cleanup(func() {
		if h.dp != nil {
			h.dp.Remove(context.Background())
			h.dp.Close()
			h.dp = nil
		}
	})
}

// inNS runs f on a thread moved into namespace name.
func inNS(t testing.TB, name string, f func() error) error {
	t.Helper()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	defer ns.Close()
	return nsrun.DoHandle(ns, f)
}

// serve listens on TCP port in g and echoes what it reads.
func serve(t testing.TB, g *guest, port int) {
	t.Helper()
	err := listenTCP(t, g.ns, netip.AddrPortFrom(g.addr, uint16(port)), func(c net.Conn) {
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", g.ns, err)
	}
}

// listenTCP listens on TCP addr in namespace ns until the test ends and
// passes each connection it accepts to handle, in the one accepting
// goroutine: handle starts its own goroutine for the exchange.
func listenTCP(t testing.TB, ns string, addr netip.AddrPort, handle func(net.Conn)) error {
	t.Helper()
	var ln net.Listener
	err := inNS(t, ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr.String())
		return err
	})
	if err != nil {
		return err
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handle(c)
		}
	}()
	return nil
}

// dial opens a TCP connection from g to dst:port.
func dial(t testing.TB, g *guest, dst *guest, port int, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	err := inNS(t, g.ns, func() error {
		d := net.Dialer{Timeout: timeout}
		var err error
		c, err = d.Dial("tcp4", netip.AddrPortFrom(dst.addr, uint16(port)).String())
		return err
	})
	return c, err
}

// exchange sends a marker over c and checks that it comes back.
func exchange(c net.Conn, marker string) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(marker)); err != nil {
		return err
	}
	buf := make([]byte, len(marker))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if !bytes.Equal(buf, []byte(marker)) {
		return fmt.Errorf("echo %q, want %q", buf, marker)
	}
	return nil
}

// connects reports whether g reaches dst:port and exchanges a marker.
func connects(t testing.TB, g, dst *guest, port int) error {
	t.Helper()
	c, err := dial(t, g, dst, port, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return exchange(c, fmt.Sprintf("corridor-marker %s->%s:%d", g.addr, dst.addr, port))
}

// txPackets returns a link's transmitted and received packet counts in h.
func (h *host) stats(t testing.TB, link string) (tx, rx uint64) {
	t.Helper()
	l, err := testnet.Netlink(t, h.name).LinkByName(link)
	if err != nil {
		t.Fatalf("%s in %s: %v", link, h.name, err)
	}
	s := l.Attrs().Statistics
	return s.TxPackets, s.RxPackets
}
