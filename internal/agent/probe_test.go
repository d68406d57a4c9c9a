package agent

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"net/netip"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/probe"
)

// fakeWire models the underlay: what the dial sends is seen by a capture
// that is running, unless the path encrypts it.
type fakeWire struct {
	capturing bool
	encrypted bool
	outcome   probe.Outcome
	dropped   uint64
	seen      bool
	packets   uint64
	wg        uint64 // WireGuard frames to the peer 198.18.0.2
	order     []string
}

var testPeer = netip.MustParseAddr("198.18.0.2")

func (w *fakeWire) prober() *Prober {
	return &Prober{
		GuestNetns: guest.NetnsPath,
		LocalAddr:  func(a netip.Addr) bool { return a == netip.MustParseAddr("100.64.0.11") },
		PeerUnderlay: func(a netip.Addr) (netip.Addr, bool) {
			return testPeer, a == netip.MustParseAddr("100.64.0.20")
		},
		startCapture: func(_ context.Context, netns, ifname string, marker []byte) (stopCapture, error) {
			if ifname == "" {
				return nil, errors.New("no interface")
			}
			w.order = append(w.order, "capture "+ifname)
			w.capturing = true
			return func() (captured, error) {
				w.order = append(w.order, "stop")
				w.capturing = false
				return captured{seen: w.seen, packets: w.packets, dropped: w.dropped,
					wireGuard: map[netip.Addr]uint64{testPeer: w.wg, netip.MustParseAddr("198.18.0.9"): 50}}, nil
			}, nil
		},
		dial: func(_ context.Context, netns, network, addr string, marker []byte, timeout time.Duration) (probe.Result, error) {
			w.order = append(w.order, "dial "+netns+" "+network+" "+addr)
			if w.outcome == probe.Connected && !w.encrypted && w.capturing {
				w.seen = true
			}
			if w.outcome == probe.Connected && w.capturing && !strings.HasPrefix(addr, "100.64.0.11:") {
				w.packets += 4
				if w.encrypted {
					w.wg += 4
				}
			}
			return probe.Result{Outcome: w.outcome, RTT: 2 * time.Millisecond}, nil
		},
	}
}

func TestProbeOrchestration(t *testing.T) {
	req := api.ProbeRequest{FromTask: "shop/web/0", ToAddr: "100.64.0.20", Network: "tcp", Port: 5432,
		Marker: []byte("marker-123456"), CaptureIface: "eth0", Timeout: time.Second}
	for _, c := range []struct {
		name string
		wire fakeWire
		to   string
		want api.ProbeResult
	}{
		{"plain", fakeWire{outcome: probe.Connected}, "", api.ProbeResult{Connected: true, RTT: 2 * time.Millisecond, MarkerSeen: true, PeerUnderlay: "198.18.0.2"}},
		{"encrypted", fakeWire{outcome: probe.Connected, encrypted: true}, "", api.ProbeResult{Connected: true, RTT: 2 * time.Millisecond, WireGuardFrames: 4, PeerUnderlay: "198.18.0.2"}},
		{"denied", fakeWire{outcome: probe.Timeout}, "", api.ProbeResult{TimedOut: true, RTT: 2 * time.Millisecond, PeerUnderlay: "198.18.0.2"}},
		{"refused", fakeWire{outcome: probe.Refused}, "", api.ProbeResult{Refused: true, RTT: 2 * time.Millisecond, PeerUnderlay: "198.18.0.2"}},
		{"unreachable", fakeWire{outcome: probe.Unreachable}, "", api.ProbeResult{RTT: 2 * time.Millisecond, PeerUnderlay: "198.18.0.2"}},
		{"local", fakeWire{outcome: probe.Connected, encrypted: true}, "100.64.0.11", api.ProbeResult{Connected: true, RTT: 2 * time.Millisecond}},
		{"capture lost frames", fakeWire{outcome: probe.Connected, encrypted: true, dropped: 3}, "", api.ProbeResult{Connected: true, RTT: 2 * time.Millisecond,
			WireGuardFrames: 4, PeerUnderlay: "198.18.0.2",
			Error: "the capture on eth0 lost 3 frames: the marker's absence is not proven"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := c.wire
			r := req
			if c.to != "" {
				r.ToAddr = c.to
			}
			got, err := w.prober().Probe(context.Background(), r)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
			want := []string{"capture eth0", "dial /run/netns/cor-shop-web-0 tcp " + r.ToAddr + ":5432", "stop"}
			if strings.Join(w.order, "|") != strings.Join(want, "|") {
				t.Errorf("order %q, want %q", w.order, want)
			}
		})
	}

	// A capture that sees nothing of a remote connection proves nothing.
	w := fakeWire{outcome: probe.Connected, encrypted: true}
	p := w.prober()
	inner := p.dial
	p.dial = func(ctx context.Context, netns, network, addr string, marker []byte, timeout time.Duration) (probe.Result, error) {
		w.capturing = false // the capture watches the wrong interface
		return inner(ctx, netns, network, addr, marker, timeout)
	}
	got, err := p.Probe(context.Background(), req)
	if err != nil || !strings.Contains(got.Error, "saw no packet") {
		t.Fatalf("blind capture: %+v, %v", got, err)
	}
}

// A VM source's probe goes through its probe port, inside the capture; a
// VM that answers nothing there is reported skipped, with the reason.
func TestProbeThroughVMChannel(t *testing.T) {
	req := api.ProbeRequest{FromTask: "shop/db/0", ToAddr: "100.64.0.20", Network: "tcp", Port: 5432,
		Marker: []byte("marker-123456"), CaptureIface: "eth0", Timeout: time.Second}
	w := fakeWire{outcome: probe.Connected}
	p := w.prober()
	p.Channel = func(task string) string {
		if task == "shop/db/0" {
			return "/state/vm/shop-db-0/probe.sock"
		}
		return ""
	}
	answer := true
	p.remote = func(_ context.Context, sock, network, addr string, marker []byte, timeout, grace time.Duration) (probe.Result, error) {
		w.order = append(w.order, "remote "+sock+" "+network+" "+addr)
		if !answer {
			return probe.Result{}, probe.ErrNoResponder
		}
		if w.capturing {
			w.seen, w.packets = true, 4
		}
		return probe.Result{Outcome: probe.Connected, RTT: 3 * time.Millisecond}, nil
	}
	got, err := p.Probe(context.Background(), req)
	if err != nil || got != (api.ProbeResult{Connected: true, RTT: 3 * time.Millisecond, MarkerSeen: true, PeerUnderlay: "198.18.0.2"}) {
		t.Fatalf("probe through the VM's port: %+v, %v", got, err)
	}
	want := "capture eth0|remote /state/vm/shop-db-0/probe.sock tcp 100.64.0.20:5432|stop"
	if strings.Join(w.order, "|") != want {
		t.Errorf("order %q, want %q", w.order, want)
	}

	// This VM's responder answered: a slow answer now is an incomplete
	// probe (an error), not "no responder", and the VM is not muted.
	answer, w.seen = false, false
	got, err = p.Probe(context.Background(), req)
	if err == nil || !strings.Contains(err.Error(), "answered before") || got.Skipped != "" {
		t.Fatalf("a VM whose responder answered before, silent now: %+v, %v; want an error", got, err)
	}
	if p.muted("shop/db/0") {
		t.Fatal("a VM whose responder answered before was muted")
	}

	// A VM that never answered has no responder: skipped, with the reason.
	req.FromTask = "shop/db/1"
	p.Channel = func(string) string { return "/state/vm/x/probe.sock" }
	got, err = p.Probe(context.Background(), req)
	if err != nil || got.Skipped == "" || got.Connected || got.TimedOut {
		t.Fatalf("a VM without a responder: %+v, %v; want skipped", got, err)
	}
	// Asked once: the next probes from that VM are skipped without
	// waiting on its port again.
	w.order = nil
	if got, err = p.Probe(context.Background(), req); err != nil || got.Skipped == "" {
		t.Fatalf("second probe from a mute VM: %+v, %v", got, err)
	}
	if len(w.order) != 0 {
		t.Errorf("the mute VM's port was asked again, or captured for: %q", w.order)
	}
}

// A marker seen on the underlay is reported whatever else failed: a VM
// whose port gives no answer, or a capture that ended in an error, still
// reports the plaintext it saw.
func TestProbeReportsSeenMarker(t *testing.T) {
	req := api.ProbeRequest{FromTask: "shop/db/0", ToAddr: "100.64.0.20", Network: "tcp", Port: 5432,
		Marker: []byte("marker-123456"), CaptureIface: "eth0", Timeout: time.Second}
	w := fakeWire{outcome: probe.Connected}
	p := w.prober()
	p.Channel = func(string) string { return "/state/vm/shop-db-0/probe.sock" }
	p.remote = func(context.Context, string, string, string, []byte, time.Duration, time.Duration) (probe.Result, error) {
		w.seen = true // the guest's marker crossed in plain; its answer was lost
		return probe.Result{}, probe.ErrNoResponder
	}
	got, err := p.Probe(context.Background(), req)
	if err != nil || !got.MarkerSeen {
		t.Fatalf("plaintext from a VM that did not answer: %+v, %v; want MarkerSeen", got, err)
	}
	w = fakeWire{outcome: probe.Connected}
	p = w.prober()
	inner := p.startCapture
	p.startCapture = func(ctx context.Context, netns, ifname string, marker []byte) (stopCapture, error) {
		stop, err := inner(ctx, netns, ifname, marker)
		return func() (captured, error) {
			c, _ := stop()
			return c, errors.New("read error")
		}, err
	}
	got, err = p.Probe(context.Background(), req)
	if err != nil || !got.MarkerSeen || got.Error == "" {
		t.Fatalf("plaintext seen by a capture that then failed: %+v, %v; want MarkerSeen and the error", got, err)
	}
}

// Probes from one VM wait for each other: its probe port serves one
// client at a time.
func TestProbeOneAtATimePerVM(t *testing.T) {
	req := api.ProbeRequest{FromTask: "shop/db/0", ToAddr: "100.64.0.20", Network: "tcp", Port: 5432,
		Marker: []byte("marker-123456"), CaptureIface: "eth0", Timeout: time.Second}
	p := &Prober{
		Channel: func(string) string { return "/state/vm/shop-db-0/probe.sock" },
		startCapture: func(context.Context, string, string, []byte) (stopCapture, error) {
			return func() (captured, error) { return captured{packets: 1}, nil }, nil
		},
	}
	var mu sync.Mutex
	inside, most := 0, 0
	p.remote = func(context.Context, string, string, string, []byte, time.Duration, time.Duration) (probe.Result, error) {
		mu.Lock()
		inside++
		most = max(most, inside)
		mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		mu.Lock()
		inside--
		mu.Unlock()
		return probe.Result{Outcome: probe.Timeout}, nil
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := p.Probe(context.Background(), req); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if most != 1 {
		t.Fatalf("%d probes at once through one VM's port", most)
	}
}
