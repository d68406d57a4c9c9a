package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/corridor-dev/corridor/internal/nsrun"
)

// Bounds of a Listener: how much of each connection or datagram it keeps
// to answer Received, how many of those it keeps, how much it echoes, and
// how long it gives one connection.
const (
	keepHead    = 1024
	keepHeads   = 256
	maxEcho     = 64 << 10
	connTimeout = 10 * time.Second
)

// Listener is a tiny echo server inside a network namespace, for checking
// ports that no task listens on: with it, an allowed path gives Connected
// rather than Refused, and Received tells that the marker arrived.
//
// TCP: each connection's bytes (up to 64 KiB) are echoed back, and the
// connection is closed when the client half-closes, after 64 KiB, or after
// ten seconds. UDP: each datagram is echoed back to its sender.
type Listener struct {
	network string
	ln      net.Listener   // TCP
	pc      net.PacketConn // UDP
	wg      sync.WaitGroup
	once    sync.Once

	conns, datagrams atomic.Uint64

	mu    sync.Mutex
	heads [][]byte // ring of the first bytes of recent connections/datagrams
	next  int
	conn  map[net.Conn]struct{}
}

// Listen opens an echo Listener on addr (a literal "ip:port"; port 0
// picks one) over network (tcp* or udp*) inside the network namespace at
// netnsPath ("" for the caller's own). It serves until Close or until ctx
// is done.
func Listen(ctx context.Context, netnsPath, network, addr string) (*Listener, error) {
	if err := checkArgs(network, addr); err != nil {
		return nil, err
	}
	l := &Listener{network: network, conn: make(map[net.Conn]struct{})}
	err := nsrun.Do(netnsPath, func() error {
		var err error
		if isTCP(network) {
			l.ln, err = net.Listen(network, addr)
		} else {
			l.pc, err = net.ListenPacket(network, addr)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("probe: listen %s %s in netns %q: %w", network, addr, netnsPath, err)
	}
	l.wg.Add(1)
	if l.ln != nil {
		go l.acceptLoop()
	} else {
		go l.packetLoop()
	}
	context.AfterFunc(ctx, func() { l.Close() })
	return l, nil
}

// Addr is the address the listener is bound to.
func (l *Listener) Addr() net.Addr {
	if l.ln != nil {
		return l.ln.Addr()
	}
	return l.pc.LocalAddr()
}

// Received reports whether marker was in the first kilobyte of one of the
// last 256 connections or datagrams.
func (l *Listener) Received(marker []byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.heads {
		if bytes.Contains(h, marker) {
			return true
		}
	}
	return false
}

// Counts returns how many TCP connections and UDP datagrams came in.
func (l *Listener) Counts() (conns, datagrams uint64) {
	return l.conns.Load(), l.datagrams.Load()
}

// Close stops the listener, closes its open connections and waits for
// its goroutines.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		if l.ln != nil {
			err = l.ln.Close()
		} else {
			err = l.pc.Close()
		}
		l.mu.Lock()
		for c := range l.conn {
			c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	return err
}

func (l *Listener) remember(b []byte) {
	h := bytes.Clone(b[:min(len(b), keepHead)])
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.heads) < keepHeads {
		l.heads = append(l.heads, h)
		return
	}
	l.heads[l.next] = h
	l.next = (l.next + 1) % keepHeads
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		l.conns.Add(1)
		l.mu.Lock()
		l.conn[c] = struct{}{}
		l.mu.Unlock()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer func() {
				l.mu.Lock()
				delete(l.conn, c)
				l.mu.Unlock()
				c.Close()
			}()
			l.echo(c)
		}()
	}
}

// echo reads the client's bytes until it half-closes (or the limits hit),
// remembers their head, and sends them back.
func (l *Listener) echo(c net.Conn) {
	c.SetDeadline(time.Now().Add(connTimeout))
	var got bytes.Buffer
	buf := make([]byte, 4096)
	for got.Len() < maxEcho {
		n, err := c.Read(buf[:min(len(buf), maxEcho-got.Len())])
		if n > 0 {
			// Echo as it comes, so that a client that does not half-close
			// still gets its bytes back.
			if _, werr := c.Write(buf[:n]); werr != nil {
				break
			}
			got.Write(buf[:n])
		}
		if err != nil {
			break
		}
	}
	l.remember(got.Bytes())
}

func (l *Listener) packetLoop() {
	defer l.wg.Done()
	buf := make([]byte, maxEcho)
	for {
		n, from, err := l.pc.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		l.datagrams.Add(1)
		l.remember(buf[:n])
		l.pc.WriteTo(buf[:n], from)
	}
}
