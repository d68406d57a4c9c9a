package testnet

import (
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// EchoLine is the size of one line of an EchoStream.
const EchoLine = 40

// EchoStream is a sequence-numbered TCP exchange over a connection whose
// other end echoes what it reads: a line of EchoLine bytes (the marker,
// '-', the line's number zero-padded) every interval; each echo must come
// back whole and in order. The rotation, agent-kill and drain tests run
// one through a path while they change it.
type EchoStream struct {
	c         net.Conn
	marker    string
	sent, got atomic.Uint64
	bad       atomic.Value
	stop      chan struct{}
	written   chan struct{} // closed when the writer has stopped
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  string
}

// StartEchoStream starts writing lines on c (dialed by the caller, in
// the namespace it chose) and reading their echoes. The stream is closed
// when the test ends, if not before.
func StartEchoStream(t testing.TB, c net.Conn, marker string, every time.Duration) *EchoStream {
	t.Helper()
	if len(marker)+2 > EchoLine {
		t.Fatalf("echo stream marker %q is too long for a %d-byte line", marker, EchoLine)
	}
	s := &EchoStream{c: c, marker: marker, stop: make(chan struct{}), written: make(chan struct{})}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, EchoLine)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if want := s.line(s.got.Load()); string(buf) != want {
				s.bad.CompareAndSwap(nil, fmt.Sprintf("echo %q, want %q", buf, want))
			}
			s.got.Add(1)
		}
	}()
	go func() {
		defer s.wg.Done()
		defer close(s.written)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for seq := uint64(0); ; seq++ {
			select {
			case <-s.stop:
				return
			case <-tk.C:
			}
			if _, err := io.WriteString(c, s.line(seq)); err != nil {
				s.bad.CompareAndSwap(nil, "write: "+err.Error())
				return
			}
			s.sent.Store(seq + 1)
		}
	}()
	t.Cleanup(func() { s.Close() })
	return s
}

func (s *EchoStream) line(seq uint64) string {
	return fmt.Sprintf("%s-%0*d", s.marker, EchoLine-len(s.marker)-1, seq)
}

// Sent is how many lines were written so far.
func (s *EchoStream) Sent() uint64 { return s.sent.Load() }

// Echoed is how many lines came back so far.
func (s *EchoStream) Echoed() uint64 { return s.got.Load() }

// Retrans is the sender's retransmitted segments on this connection
// (TCP_INFO's total_retrans).
func (s *EchoStream) Retrans() uint32 {
	var n uint32
	if tc, ok := s.c.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) {
				if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
					n = info.Total_retrans
				}
			})
		}
	}
	return n
}

// Drain stops writing (the writer ends before the connection is closed:
// a line it was about to send must not meet a closed socket) and waits up
// to wait for every line's echo. It gives what was sent and echoed.
func (s *EchoStream) Drain(wait time.Duration) (sent, echoed uint64) {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.written
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) && s.got.Load() < s.sent.Load() {
		time.Sleep(20 * time.Millisecond)
	}
	return s.sent.Load(), s.got.Load()
}

// Close drains the stream if that was not done (without waiting for
// echoes), closes the connection, and gives the first thing that went
// wrong: an echo out of order or a failed write ("" for none).
func (s *EchoStream) Close() string {
	s.closeOnce.Do(func() {
		s.Drain(0)
		s.c.Close()
		s.wg.Wait()
		if v := s.bad.Load(); v != nil {
			s.closeErr = v.(string)
		}
	})
	return s.closeErr
}

// SNMPField reads one counter of /proc/net/snmp's text (a header line and
// a value line per protocol), such as ("Tcp:", "RetransSegs"); 0 when it
// is not there.
func SNMPField(snmp, proto, field string) uint64 {
	var head []string
	for _, line := range strings.Split(snmp, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != proto {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		if i := slices.Index(head, field); i > 0 && i < len(f) {
			n, _ := strconv.ParseUint(f[i], 10, 64)
			return n
		}
		return 0
	}
	return 0
}
