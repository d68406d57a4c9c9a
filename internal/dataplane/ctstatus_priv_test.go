package dataplane

import (
	"io"
	"net"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// Conntrack status bits the test expects (enum ip_conntrack_status).
const (
	ipsSeenReply = 1 << 1
	ipsAssured   = 1 << 2
	ipsConfirmed = 1 << 3
)

// TestCountConntrack: in a namespace holding one TCP connection over IPv4,
// one over IPv6 (both answered, so ASSURED) and one unanswered UDP flow,
// countConntrack finds all three entries (both families in one dump), and
// counts an entry only when it has every bit asked for; an untouched
// namespace has none; a closed handle is an error.
func TestCountConntrack(t *testing.T) {
	names := testnet.Namespaces(t, "ct", "conn", "empty")
	ns := openNS(t, names[0])
	trackConnections(t, ns)

	var (
		lns  []net.Listener
		conn []net.Conn
		udp  [2]net.PacketConn // receiver, sender
	)
	t.Cleanup(func() {
		for _, c := range conn {
			c.Close()
		}
		for _, l := range lns {
			l.Close()
		}
		for _, u := range udp {
			if u != nil {
				u.Close()
			}
		}
	})
	// Sockets stay in the namespace they were made in.
	err := nsrun.DoHandle(ns, func() error {
		for _, a := range [][2]string{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
			l, err := net.Listen(a[0], a[1])
			if err != nil {
				return err
			}
			lns = append(lns, l)
			c, err := net.Dial(a[0], l.Addr().String())
			if err != nil {
				return err
			}
			conn = append(conn, c)
		}
		var err error
		if udp[0], err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			return err
		}
		udp[1], err = net.ListenPacket("udp4", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatalf("sockets in %s: %v", names[0], err)
	}
	for i, l := range lns {
		echoOnce(t, l, conn[i])
	}
	if _, err := udp[1].WriteTo([]byte("x"), udp[0].LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := udp[0].ReadFrom(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name   string
		status uint32
		want   int
	}{
		{"any status", 0, 3},
		{"confirmed", ipsConfirmed, 3},
		{"seen reply", ipsSeenReply, 2},
		{"assured", ipsAssured, 2},
		{"assured and confirmed", ipsAssured | ipsConfirmed, 2},
		{"offloaded (no flowtable here)", ipsOffload, 0},
		{"assured and offloaded", ipsAssured | ipsOffload, 0},
	} {
		got, err := countConntrack(ns, c.status, 0, 0)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got != c.want {
			t.Errorf("%s (status %#x): %d entries, want %d\n%s", c.name, c.status, got, c.want,
				run(t, "ip", "netns", "exec", names[0], "cat", "/proc/net/nf_conntrack"))
		}
	}

	// The kernel's filter by ct mark: the TCP connections carry
	// MarkPlain (trackConnections), the UDP flow none.
	for _, c := range []struct {
		name       string
		mark, mask uint32
		want       int
	}{
		{"plain", MarkPlain, MarkMask, 2},
		{"encrypted", MarkEncrypt, MarkMask, 0},
		{"no path mark", 0, MarkMask, 1},
		{"plain, not ingress", MarkPlain, MarkMask | MarkIngress, 2},
	} {
		if got, err := countConntrack(ns, ipsConfirmed, c.mark, c.mask); err != nil || got != c.want {
			t.Errorf("ct mark & %#x == %#x: %d entries, %v; want %d", c.mask, c.mark, got, err, c.want)
		}
	}

	if got, err := countConntrack(openNS(t, names[1]), 0, 0, 0); err != nil || got != 0 {
		t.Errorf("untouched namespace: %d entries, %v; want 0, nil", got, err)
	}

	if _, err := countConntrack(netns.None(), 0, 0, 0); err == nil || !strings.HasPrefix(err.Error(), "dump conntrack: ") {
		t.Errorf("closed handle: %v; want a dump conntrack error", err)
	}
}

// openNS opens namespace name, closed when the test ends.
func openNS(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// trackConnections makes conntrack track connections in ns: its hooks are
// registered in a namespace only once a rule there uses it, as
// "ct state established counter" in an output chain does.
func trackConnections(t *testing.T, ns netns.NsHandle) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tb := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "cortst_ct"})
	ch := c.AddChain(&nftables.Chain{Name: "output", Table: tb, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Counter{},
	}})
	// TCP connections get the plain path's ct mark, for the mark filter.
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(MarkPlain)},
		&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: 1},
	}})
	if err := c.Flush(); err != nil {
		t.Fatalf("nft table with a ct rule: %v", err)
	}
}

// echoOnce accepts c's peer on l and sends a few bytes each way, so that
// the connection's conntrack entry has seen a reply and is assured.
func echoOnce(t *testing.T, l net.Listener, c net.Conn) {
	t.Helper()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	go io.CopyN(s, s, 4)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatalf("echo over %s: %v", l.Addr(), err)
	}
}
