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

// UDPStream is a sequence-numbered UDP stream: a datagram every interval
// on out, each carrying the marker and its number ("marker-N"), counted
// as it arrives on in. A datagram whose send fails counts as sent, hence
// lost.
type UDPStream struct {
	marker  string
	out     net.Conn
	in      net.PacketConn
	sent    atomic.Uint64
	sendErr atomic.Uint64
	lastErr atomic.Value
	stop    chan struct{}
	sending chan struct{} // closed when the sender has stopped
	wg      sync.WaitGroup
	once    sync.Once

	mu     sync.Mutex
	got    map[uint64]bool
	sentAt []time.Time // by number
	last   time.Time   // of the last arrival
	maxGap time.Duration
}

// StartUDPStream starts sending on out (dialed by the caller, in the
// namespace it chose) and counting what arrives on in (likewise). The
// stream is finished when the test ends, if not before.
func StartUDPStream(t testing.TB, out net.Conn, in net.PacketConn, marker string, every time.Duration) *UDPStream {
	t.Helper()
	u := &UDPStream{marker: marker, out: out, in: in, got: map[uint64]bool{}, stop: make(chan struct{}), sending: make(chan struct{})}
	// A receive queue that a reader starved by a loaded machine does not
	// overflow: a loss counted here is one of the path.
	if uc, ok := in.(*net.UDPConn); ok {
		if err := uc.SetReadBuffer(8 << 20); err != nil {
			t.Fatal(err)
		}
	}
	u.wg.Add(2)
	go func() {
		defer u.wg.Done()
		buf := make([]byte, 256)
		for {
			n, _, err := u.in.ReadFrom(buf)
			if err != nil {
				return
			}
			s := string(buf[:n])
			i := strings.LastIndexByte(s, '-')
			if i <= 0 || s[:i] != u.marker {
				continue
			}
			seq, err := strconv.ParseUint(s[i+1:], 10, 64)
			if err != nil {
				continue
			}
			now := time.Now()
			u.mu.Lock()
			u.got[seq] = true
			if !u.last.IsZero() && now.Sub(u.last) > u.maxGap {
				u.maxGap = now.Sub(u.last)
			}
			u.last = now
			u.mu.Unlock()
		}
	}()
	go func() {
		defer u.wg.Done()
		defer close(u.sending)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for seq := uint64(0); ; seq++ {
			select {
			case <-u.stop:
				return
			case <-tk.C:
			}
			u.mu.Lock()
			u.sentAt = append(u.sentAt, time.Now())
			u.mu.Unlock()
			if _, err := fmt.Fprintf(u.out, "%s-%d", u.marker, seq); err != nil {
				u.sendErr.Add(1)
				u.lastErr.Store(err.Error())
			}
			u.sent.Store(seq + 1)
		}
	}()
	t.Cleanup(func() { u.Finish(0) })
	return u
}

// Sent is how many datagrams were sent so far.
func (u *UDPStream) Sent() uint64 { return u.sent.Load() }

// Received is how many distinct datagrams arrived so far.
func (u *UDPStream) Received() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.got)
}

// SendErrors is how many sends failed, and the last error.
func (u *UDPStream) SendErrors() (n uint64, last string) {
	last, _ = u.lastErr.Load().(string)
	return u.sendErr.Load(), last
}

// MaxGap is the longest time between two arrivals.
func (u *UDPStream) MaxGap() time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.maxGap
}

// LostRun is a run of consecutive lost datagrams: their numbers and when
// the first and the last were sent.
type LostRun struct {
	First, Last uint64
	From, To    time.Time
}

// LostRuns lists the runs of datagrams sent and not (yet) arrived.
func (u *UDPStream) LostRuns() []LostRun {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []LostRun
	n := min(u.sent.Load(), uint64(len(u.sentAt)))
	for seq := uint64(0); seq < n; seq++ {
		if u.got[seq] {
			continue
		}
		end := seq
		for end+1 < n && !u.got[end+1] {
			end++
		}
		out = append(out, LostRun{First: seq, Last: end, From: u.sentAt[seq], To: u.sentAt[end]})
		seq = end
	}
	return out
}

// Finish stops sending (the sender ends before its socket is closed: a
// datagram it was about to send must not meet a closed socket and count
// as lost), waits up to wait for the datagrams in flight, closes both
// sockets, and gives how many were sent and lost. Later calls give the
// same.
func (u *UDPStream) Finish(wait time.Duration) (sent, lost uint64) {
	u.once.Do(func() {
		close(u.stop)
		<-u.sending
		deadline := time.Now().Add(wait)
		for time.Now().Before(deadline) && uint64(u.Received()) < u.sent.Load() {
			time.Sleep(20 * time.Millisecond)
		}
		u.out.Close()
		u.in.Close()
		u.wg.Wait()
	})
	sent = u.sent.Load()
	return sent, sent - uint64(u.Received())
}
