package testnet

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// echoServer accepts one connection on loopback and hands it to serve.
func echoServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	return ln.Addr().String()
}

func startOn(t *testing.T, addr string) *EchoStream {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	return StartEchoStream(t, c, "unit", time.Millisecond)
}

func waitEchoed(t *testing.T, s *EchoStream, n uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for s.Echoed() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d echoes of %d sent within 20 s", s.Echoed(), s.Sent())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEchoStream(t *testing.T) {
	s := startOn(t, echoServer(t, func(c net.Conn) { io.Copy(c, c) }))
	waitEchoed(t, s, 20)
	sent, echoed := s.Drain(10 * time.Second)
	if sent == 0 || echoed != sent {
		t.Fatalf("sent %d, echoed %d", sent, echoed)
	}
	if bad := s.Close(); bad != "" {
		t.Fatalf("a faithful echo reported %q", bad)
	}
	if s.Close() != "" || s.Sent() != sent {
		t.Fatal("a second Close changed the result")
	}
}

// An echo that skips a line is reported, not counted as in order.
func TestEchoStreamOutOfOrder(t *testing.T) {
	s := startOn(t, echoServer(t, func(c net.Conn) {
		buf := make([]byte, EchoLine)
		for n := 0; ; n++ {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if n == 3 {
				continue // line 3 lost
			}
			c.Write(buf)
		}
	}))
	waitEchoed(t, s, 10)
	s.Drain(0)
	if bad := s.Close(); !strings.Contains(bad, "unit-") || !strings.Contains(bad, "want") {
		t.Fatalf("a skipped line was not reported: %q", bad)
	}
}

func TestSNMPField(t *testing.T) {
	snmp := "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RetransSegs InErrs\nTcp: 1 42 0\nUdp: InDatagrams InErrors\nUdp: 9 7\n"
	for _, tc := range []struct {
		proto, field string
		want         uint64
	}{{"Tcp:", "RetransSegs", 42}, {"Udp:", "InErrors", 7}, {"Udp:", "RcvbufErrors", 0}, {"Icmp:", "InMsgs", 0}} {
		if got := SNMPField(snmp, tc.proto, tc.field); got != tc.want {
			t.Errorf("%s %s = %d, want %d", tc.proto, tc.field, got, tc.want)
		}
	}
}

func TestUDPStream(t *testing.T) {
	in, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	out, err := net.Dial("udp4", in.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	// Foreign datagrams on the port are not counted.
	other, err := net.Dial("udp4", in.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	u := StartUDPStream(t, out, in, "unit", time.Millisecond)
	other.Write([]byte("other-5"))
	deadline := time.Now().Add(20 * time.Second)
	for u.Received() < 50 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d arrived within 20 s", u.Received(), u.Sent())
		}
		time.Sleep(5 * time.Millisecond)
	}
	sent, lost := u.Finish(10 * time.Second)
	if sent < 50 || lost != 0 || len(u.LostRuns()) != 0 {
		t.Fatalf("sent %d, lost %d (%+v) on loopback", sent, lost, u.LostRuns())
	}
	if n, _ := u.SendErrors(); n != 0 {
		t.Fatalf("%d sends failed", n)
	}
	if s2, l2 := u.Finish(0); s2 != sent || l2 != lost {
		t.Fatal("a second Finish changed the result")
	}
}

// Datagrams that never arrive are counted lost, in runs.
func TestUDPStreamLoss(t *testing.T) {
	in, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sink, err := net.ListenPacket("udp4", "127.0.0.1:0") // nobody reads what the stream counts
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	out, err := net.Dial("udp4", sink.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	u := StartUDPStream(t, out, in, "unit", time.Millisecond)
	deadline := time.Now().Add(20 * time.Second)
	for u.Sent() < 10 {
		if time.Now().After(deadline) {
			t.Fatal("nothing sent within 20 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	sent, lost := u.Finish(0)
	runs := u.LostRuns()
	if lost != sent || len(runs) != 1 || runs[0].First != 0 || runs[0].Last != sent-1 {
		t.Fatalf("sent %d, lost %d, runs %+v: want all lost in one run", sent, lost, runs)
	}
}
