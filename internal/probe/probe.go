// Package probe tests reachability from inside a network namespace: Dial
// connects (TCP) or sends (UDP) to an address with a marker as payload and
// says what came of it; Listen opens a small echo listener inside a
// namespace, for ports where no task listens.
//
// # Reading the outcome
//
// Corridor's firewall drops what the policy denies, never rejects it. So
// `corridor verify` reads a probe as follows:
//
//   - Connected: the path is open (allowed).
//   - Refused: a TCP RST or ICMP port unreachable came back: the packet got
//     to the destination host and nobody listens on that port. The path is
//     open at the network level: count it as reachable. (Probe a port a
//     task listens on, or put a Listen there, to get Connected.)
//   - Timeout: nothing came back: dropped on the way, which for a denied
//     pair is our firewall doing its job (denied). For an allowed pair it is
//     a failure. A timeout does not say where the packet died; combine it
//     with internal/capture to find out.
//   - Unreachable: ICMP host or network unreachable, or no route: no path
//     (denied, or broken routing).
//   - Prohibited: the local kernel refused to send (EPERM or EACCES: a
//     firewall on the sending host, or a "prohibit" route): no path.
//
// A firewall that rejected with a TCP reset or ICMP port unreachable would
// be indistinguishable from Refused, which is one reason Corridor drops.
//
// UDP has no handshake: a UDP probe is Connected only when a reply comes
// back (Listen echoes), Refused when ICMP port unreachable comes back, and
// Timeout otherwise — which, unlike TCP, is also what a live service that
// does not answer looks like. Probe UDP against a Listen.
package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/corridor-dev/corridor/internal/nsrun"
)

// Outcome is what became of a probe.
type Outcome string

// Outcomes of a probe; see the package documentation for how to read them.
const (
	Connected   Outcome = "connected"
	Refused     Outcome = "refused"
	Timeout     Outcome = "timeout"
	Unreachable Outcome = "unreachable"
	Prohibited  Outcome = "prohibited"
	Failed      Outcome = "error" // anything else; Result.Err says what
)

// maxReply bounds how much of a reply a probe reads.
const maxReply = 64 << 10

// Result is the outcome of one probe.
type Result struct {
	Netns   string  `json:"netns,omitempty"`
	Network string  `json:"network"`
	Addr    string  `json:"addr"`
	Outcome Outcome `json:"outcome"`
	// RTT is the TCP handshake time (Connected), the time to the first
	// reply (UDP), or to the error.
	RTT time.Duration `json:"rtt"`
	// Sent is how many marker bytes were written; Reply how many bytes
	// came back; Echoed whether the reply held the marker.
	Sent   int    `json:"sent"`
	Reply  int    `json:"reply"`
	Echoed bool   `json:"echoed"`
	Err    string `json:"err,omitempty"`
}

// Reachable reports whether the destination host was reached: Connected
// or Refused (see the package documentation).
func (r Result) Reachable() bool { return r.Outcome == Connected || r.Outcome == Refused }

// Dial probes addr (a literal "ip:port") over network ("tcp", "tcp4",
// "tcp6", "udp", "udp4" or "udp6") from inside the network namespace at
// netnsPath ("" for the caller's own), sending marker as the payload.
//
// For TCP it connects, writes the marker, half-closes, and reads the reply
// until the peer closes or timeout runs out (a Listen echoes and closes at
// once). For UDP it sends the marker in one datagram and waits for one
// reply. timeout bounds the whole probe.
//
// The returned error is for bad arguments, a namespace that cannot be
// entered, or ctx ended by the caller; every network outcome, including
// failures, is in the Result.
func Dial(ctx context.Context, netnsPath, network, addr string, marker []byte, timeout time.Duration) (Result, error) {
	res := Result{Netns: netnsPath, Network: network, Addr: addr}
	if err := checkArgs(network, addr); err != nil {
		return res, err
	}
	if timeout <= 0 {
		return res, fmt.Errorf("probe: timeout must be positive, got %v", timeout)
	}
	if len(marker) == 0 || len(marker) > 1024 {
		return res, fmt.Errorf("probe: marker must be 1 to 1024 bytes, got %d", len(marker))
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	deadline, _ := pctx.Deadline()

	var (
		conn  net.Conn
		start time.Time
		derr  error
	)
	err := nsrun.Do(netnsPath, func() error {
		d := net.Dialer{}
		start = time.Now()
		conn, derr = d.DialContext(pctx, network, addr)
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("probe: %w", err)
	}
	if derr != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("probe %s %s: %w", network, addr, ctx.Err())
		}
		res.RTT = time.Since(start)
		res.Outcome, res.Err = classify(derr), derr.Error()
		return res, nil
	}
	defer conn.Close()
	// Stop blocking reads and writes when the caller gives up.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	conn.SetDeadline(deadline)

	if isTCP(network) {
		res.RTT = time.Since(start)
		res.Outcome = Connected
	}
	n, werr := conn.Write(marker)
	res.Sent = n
	if werr != nil {
		return finish(ctx, res, start, werr)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.CloseWrite()
		reply, rerr := io.ReadAll(io.LimitReader(conn, maxReply))
		res.Reply, res.Echoed = len(reply), bytes.Contains(reply, marker)
		if rerr != nil && !errors.Is(rerr, syscall.ECONNRESET) {
			// Connected stands: the reply is extra information, and a
			// service that keeps the connection open is not a failure.
			res.Err = rerr.Error()
		}
		if ctx.Err() != nil {
			return res, fmt.Errorf("probe %s %s: %w", network, addr, ctx.Err())
		}
		return res, nil
	}
	buf := make([]byte, maxReply)
	k, rerr := conn.Read(buf)
	if rerr != nil {
		return finish(ctx, res, start, rerr)
	}
	res.RTT = time.Since(start)
	res.Outcome = Connected
	res.Reply, res.Echoed = k, bytes.Contains(buf[:k], marker)
	return res, nil
}

// finish records a failure after the socket was made.
func finish(ctx context.Context, res Result, start time.Time, err error) (Result, error) {
	if ctx.Err() != nil {
		return res, fmt.Errorf("probe %s %s: %w", res.Network, res.Addr, ctx.Err())
	}
	if res.Outcome == Connected {
		res.Err = err.Error()
		return res, nil
	}
	res.RTT = time.Since(start)
	res.Outcome, res.Err = classify(err), err.Error()
	return res, nil
}

// classify maps a socket error to an outcome.
func classify(err error) Outcome {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return Unreachable
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return Prohibited
	case errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return Timeout
	default:
		return Failed
	}
}

func isTCP(network string) bool { return network == "tcp" || network == "tcp4" || network == "tcp6" }

func isUDP(network string) bool { return network == "udp" || network == "udp4" || network == "udp6" }

// checkArgs insists on a literal address: a name would be resolved with
// the resolver configuration of the caller's mount namespace, not the
// guest's, which is not what a probe of a path means.
func checkArgs(network, addr string) error {
	if !isTCP(network) && !isUDP(network) {
		return fmt.Errorf("probe: network %q: want tcp, tcp4, tcp6, udp, udp4 or udp6", network)
	}
	if _, err := netip.ParseAddrPort(addr); err != nil {
		return fmt.Errorf("probe: addr %q: want a literal ip:port: %w", addr, err)
	}
	return nil
}

// DialContext opens a connection from inside the network namespace at
// netnsPath, for callers that speak a protocol over it (an HTTP client whose
// transport dials into a guest, say). addr must be an IP literal and port,
// so that the dial makes one socket, on the entered thread.
func DialContext(ctx context.Context, netnsPath, network, addr string) (net.Conn, error) {
	if err := checkArgs(network, addr); err != nil {
		return nil, err
	}
	var c net.Conn
	err := nsrun.Do(netnsPath, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
