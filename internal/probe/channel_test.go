package probe

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// A responder behind a unix socket answers probes run from its own
// namespace (here the test's: a loopback echo listener), and a socket with
// nothing answering gives ErrNoResponder, not a hang.
func TestChannel(t *testing.T) {
	ctx := context.Background()
	l, err := Listen(ctx, "", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	sock := unixServer(t, func(c net.Conn) { Serve(ctx, c) })
	res, err := Remote(ctx, sock, "tcp", l.Addr().String(), []byte("corridor-channel-marker"), time.Second, time.Second)
	if err != nil || res.Outcome != Connected || !res.Echoed {
		t.Fatalf("Remote to a listener: %+v, %v", res, err)
	}
	if !l.Received([]byte("corridor-channel-marker")) {
		t.Fatal("the listener never got the marker")
	}
	// Nothing listens on port 1: refused, told as a result.
	res, err = Remote(ctx, sock, "tcp", "127.0.0.1:1", []byte("x"), time.Second, time.Second)
	if err != nil || res.Outcome != Refused {
		t.Fatalf("Remote to a closed port: %+v, %v", res, err)
	}
	// A bad request is answered as a failed probe.
	res, err = Remote(ctx, sock, "tcp", "127.0.0.1:1", nil, time.Second, time.Second)
	if err != nil || res.Outcome != Failed {
		t.Fatalf("Remote with no marker: %+v, %v", res, err)
	}

	// A socket whose other end never answers (a VM without a responder).
	mute := unixServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	start := time.Now()
	_, err = Remote(ctx, mute, "tcp", "127.0.0.1:1", []byte("x"), 200*time.Millisecond, 100*time.Millisecond)
	if !errors.Is(err, ErrNoResponder) || time.Since(start) > 5*time.Second {
		t.Fatalf("Remote to a mute socket: %v after %s", err, time.Since(start))
	}
}

// unixServer serves each connection to a new unix socket with handle (the
// connection is closed after it) until the test ends, and returns its path.
func unixServer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	return sock
}
