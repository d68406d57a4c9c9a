package capture

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// testNet is two network namespaces joined by two veth pairs:
//
//	a: corcapa 198.19.201.1/30  <->  b: corcapb 198.19.201.2/30   (the path)
//	a: corcapx 198.19.202.1/30  <->  b: corcapy 198.19.202.2/30   (a bystander)
type testNet struct{ a, b string }

func newTestNet(t *testing.T) testNet {
	t.Helper()
	ns := testnet.Namespaces(t, "cap", "a", "b")
	a, b := ns[0], ns[1]
	for _, cmd := range [][]string{
		{"-n", a, "link", "add", "corcapa", "type", "veth", "peer", "name", "corcapb", "netns", b},
		{"-n", a, "link", "add", "corcapx", "type", "veth", "peer", "name", "corcapy", "netns", b},
		{"-n", a, "addr", "add", "198.19.201.1/30", "dev", "corcapa"},
		{"-n", b, "addr", "add", "198.19.201.2/30", "dev", "corcapb"},
		{"-n", a, "addr", "add", "198.19.202.1/30", "dev", "corcapx"},
		{"-n", b, "addr", "add", "198.19.202.2/30", "dev", "corcapy"},
		{"-n", a, "link", "set", "corcapa", "up"},
		{"-n", b, "link", "set", "corcapb", "up"},
		{"-n", a, "link", "set", "corcapx", "up"},
		{"-n", b, "link", "set", "corcapy", "up"},
	} {
		testnet.IP(t, cmd...)
	}
	return testNet{a: testnet.Path(a), b: testnet.Path(b)}
}

// exchange sends udpMsg by UDP and tcpReq by TCP from a to b, and b answers
// the TCP request with tcpReply. It returns once b got both and a got the
// reply, so every frame has crossed the veth.
func exchange(t *testing.T, n testNet, udpMsg, tcpReq, tcpReply []byte) {
	t.Helper()
	var (
		pc net.PacketConn
		ln net.Listener
	)
	err := nsrun.Do(n.b, func() error {
		var err error
		if pc, err = net.ListenPacket("udp4", "198.19.201.2:9000"); err != nil {
			return err
		}
		ln, err = net.Listen("tcp4", "198.19.201.2:9001")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		got, err := bufio.NewReader(c).ReadBytes('\n')
		if err != nil || !strings.Contains(string(got), string(tcpReq)) {
			served <- fmt.Errorf("server got %q, %v", got, err)
			return
		}
		_, err = c.Write(append(tcpReply, '\n'))
		served <- err
	}()

	err = nsrun.Do(n.a, func() error {
		u, err := net.Dial("udp4", "198.19.201.2:9000")
		if err != nil {
			return err
		}
		defer u.Close()
		if _, err := u.Write(udpMsg); err != nil {
			return err
		}
		c, err := net.DialTimeout("tcp4", "198.19.201.2:9001", 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(append([]byte("hello "), append(tcpReq, '\n')...)); err != nil {
			return err
		}
		reply, err := bufio.NewReader(c).ReadBytes('\n')
		if err != nil || !strings.Contains(string(reply), string(tcpReply)) {
			return fmt.Errorf("client got %q, %v", reply, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if k, _, err := pc.ReadFrom(buf); err != nil || string(buf[:k]) != string(udpMsg) {
		t.Fatalf("udp receiver got %q, %v", buf[:k], err)
	}
}

func TestCaptureSeesMarkersInBothDirections(t *testing.T) {
	n := newTestNet(t)
	ctx := context.Background()
	mUDP := []byte("cormark-udp-7f3a91")
	mReq := []byte("cormark-tcp-req-55e0")
	mReply := []byte("cormark-tcp-reply-c21d")
	mNever := []byte("cormark-never-sent-0b9e")

	onA, err := Start(ctx, n.a, "corcapa", mUDP, mReq, mReply, mNever)
	if err != nil {
		t.Fatal(err)
	}
	onB, err := Start(ctx, n.b, "corcapb", mUDP, mReq, mReply, mNever)
	if err != nil {
		t.Fatal(err)
	}
	bystander, err := Start(ctx, n.a, "corcapx", mUDP, mReq, mReply)
	if err != nil {
		t.Fatal(err)
	}

	exchange(t, n, mUDP, mReq, mReply)

	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	for _, m := range [][]byte{mUDP, mReq, mReply} {
		if err := onA.WaitFor(wctx, m); err != nil {
			t.Errorf("on a: %v", err)
		}
	}
	ra, err := onA.Stop()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := onB.Stop()
	if err != nil {
		t.Fatal(err)
	}
	rx, err := bystander.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a: %+v", ra)
	t.Logf("b: %+v", rb)
	t.Logf("bystander: %+v", rx)

	for name, r := range map[string]Result{"a": ra, "b": rb} {
		for _, m := range [][]byte{mUDP, mReq, mReply} {
			if ok, err := r.Contains(m); err != nil || !ok {
				t.Errorf("capture on %s did not see %q (%v)", name, m, err)
			}
		}
		if ok, err := r.Contains(mNever); err != nil || ok {
			t.Errorf("capture on %s reports %q, which was never sent (%v)", name, mNever, err)
		}
		// Both directions: the TCP handshake alone sends frames each way.
		if r.Incoming == 0 || r.Outgoing == 0 || r.Packets != r.Incoming+r.Outgoing || r.Bytes < r.Packets*42 {
			t.Errorf("capture on %s: counters %+v, want frames both ways", name, r)
		}
		if r.Dropped != 0 {
			t.Errorf("capture on %s dropped %d frames", name, r.Dropped)
		}
	}
	// What a sends, b receives, and the other way round.
	if rb.Incoming < ra.Outgoing-ra.Outgoing/4 {
		t.Errorf("b received %d frames, a sent %d", rb.Incoming, ra.Outgoing)
	}
	for _, m := range [][]byte{mUDP, mReq, mReply} {
		if ok, _ := rx.Contains(m); ok {
			t.Errorf("capture on the other interface saw %q", m)
		}
	}
	if _, err := ra.Contains([]byte("not-watched")); !errors.Is(err, ErrNotWatched) {
		t.Errorf("Contains on an unwatched marker: %v, want ErrNotWatched", err)
	}
}

func TestCaptureWatchAfterStart(t *testing.T) {
	n := newTestNet(t)
	c, err := Start(context.Background(), n.b, "corcapb")
	if err != nil {
		t.Fatal(err)
	}
	late := []byte("cormark-late-4411")
	if err := c.Watch(late); err != nil {
		t.Fatal(err)
	}
	if err := c.Watch(nil); err == nil {
		t.Error("Watch(nil) succeeded")
	}
	exchange(t, n, late, []byte("cormark-x1"), []byte("cormark-x2"))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.WaitFor(ctx, late); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitFor(ctx, []byte("cormark-x1")); !errors.Is(err, ErrNotWatched) {
		t.Fatalf("WaitFor an unwatched marker: %v", err)
	}
	r, err := c.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if r2, _ := c.Stop(); r2.Packets != r.Packets {
		t.Fatal("a second Stop changed the result")
	}
}

func TestCaptureEndsWithContext(t *testing.T) {
	n := newTestNet(t)
	ctx, cancel := context.WithCancel(context.Background())
	m := []byte("cormark-ctx-9191")
	c, err := Start(ctx, n.a, "corcapa", m)
	if err != nil {
		t.Fatal(err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- c.WaitFor(context.Background(), m) }()
	cancel()
	select {
	case err := <-waitErr:
		if err == nil || !strings.Contains(err.Error(), "before the capture ended") {
			t.Fatalf("WaitFor after the capture's ctx ended: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("WaitFor still waiting after the capture's context ended")
	}
	if _, err := c.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestCaptureStartErrors(t *testing.T) {
	n := newTestNet(t)
	ctx := context.Background()
	if _, err := Start(ctx, n.a, "corcapnope"); err == nil || !strings.Contains(err.Error(), `"corcapnope"`) {
		t.Errorf("missing interface: %v, want an error naming it", err)
	}
	// corcapb exists, but in b, not a: the name is resolved in the namespace.
	if _, err := Start(ctx, n.a, "corcapb"); err == nil {
		t.Error("capture found an interface of another namespace")
	}
	if _, err := Start(ctx, "/var/run/netns/cortst-cap-absent", "lo"); err == nil || !strings.Contains(err.Error(), "netns") {
		t.Errorf("missing netns: %v", err)
	}
	if _, err := Start(ctx, n.a, ""); err == nil {
		t.Error("empty interface name accepted")
	}
	if _, err := Start(ctx, n.a, "lo", []byte{}); err == nil || !strings.Contains(err.Error(), "marker is empty") {
		t.Errorf("empty marker: %v", err)
	}
}

// TestCaptureCountsBulk sends a few MiB by TCP: veth hands the packet
// socket GSO super-frames, which must be counted at their full length.
func TestCaptureCountsBulk(t *testing.T) {
	n := newTestNet(t)
	const size = 4 << 20
	marker := []byte("cormark-bulk-start-a7c3")
	c, err := Start(context.Background(), n.b, "corcapb", marker)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := nsrun.Do(n.b, func() (err error) { ln, err = net.Listen("tcp4", "198.19.201.2:9002"); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer s.Close()
		k, _ := io.Copy(io.Discard, s)
		got <- k
	}()
	err = nsrun.Do(n.a, func() error {
		conn, err := net.DialTimeout("tcp4", "198.19.201.2:9002", 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		if _, err := conn.Write(marker); err != nil {
			return err
		}
		_, err = conn.Write(make([]byte, size))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if k := <-got; k != int64(size+len(marker)) {
		t.Fatalf("receiver got %d bytes", k)
	}
	r, err := c.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", r)
	if ok, _ := r.Contains(marker); !ok {
		t.Error("marker at the start of the stream not seen")
	}
	if r.Dropped == 0 && r.Bytes < size {
		t.Errorf("counted %d bytes with no drops, want at least %d", r.Bytes, size)
	}
	if r.Dropped+r.Packets == 0 {
		t.Error("saw nothing")
	}
}
