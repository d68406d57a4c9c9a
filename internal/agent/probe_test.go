package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"net/netip"

	"github.com/corridor-dev/corridor/internal/api"
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
	order     []string
}

func (w *fakeWire) prober() *Prober {
	return &Prober{
		GuestNetns: func(task string) string { return "/run/netns/cor-" + strings.ReplaceAll(task, "/", "-") },
		LocalAddr:  func(a netip.Addr) bool { return a == netip.MustParseAddr("100.64.0.11") },
		startCapture: func(_ context.Context, netns, ifname string, marker []byte) (stopCapture, error) {
			if ifname == "" {
				return nil, errors.New("no interface")
			}
			w.order = append(w.order, "capture "+ifname)
			w.capturing = true
			return func() (bool, uint64, uint64, error) {
				w.order = append(w.order, "stop")
				w.capturing = false
				return w.seen, w.packets, w.dropped, nil
			}, nil
		},
		dial: func(_ context.Context, netns, network, addr string, marker []byte, timeout time.Duration) (probe.Result, error) {
			w.order = append(w.order, "dial "+netns+" "+network+" "+addr)
			if w.outcome == probe.Connected && !w.encrypted && w.capturing {
				w.seen = true
			}
			if w.outcome == probe.Connected && w.capturing && !strings.HasPrefix(addr, "100.64.0.11:") {
				w.packets += 4
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
		{"plain", fakeWire{outcome: probe.Connected}, "", api.ProbeResult{Connected: true, RTT: 2 * time.Millisecond, MarkerSeen: true}},
		{"encrypted", fakeWire{outcome: probe.Connected, encrypted: true}, "", api.ProbeResult{Connected: true, RTT: 2 * time.Millisecond}},
		{"denied", fakeWire{outcome: probe.Timeout}, "", api.ProbeResult{TimedOut: true, RTT: 2 * time.Millisecond}},
		{"refused", fakeWire{outcome: probe.Refused}, "", api.ProbeResult{Refused: true, RTT: 2 * time.Millisecond}},
		{"unreachable", fakeWire{outcome: probe.Unreachable}, "", api.ProbeResult{RTT: 2 * time.Millisecond}},
		{"local", fakeWire{outcome: probe.Connected, encrypted: true}, "100.64.0.11", api.ProbeResult{Connected: true, RTT: 2 * time.Millisecond}},
		{"capture lost frames", fakeWire{outcome: probe.Connected, encrypted: true, dropped: 3}, "", api.ProbeResult{Connected: true, RTT: 2 * time.Millisecond,
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
	if err != nil || got != (api.ProbeResult{Connected: true, RTT: 3 * time.Millisecond, MarkerSeen: true}) {
		t.Fatalf("probe through the VM's port: %+v, %v", got, err)
	}
	want := "capture eth0|remote /state/vm/shop-db-0/probe.sock tcp 100.64.0.20:5432|stop"
	if strings.Join(w.order, "|") != want {
		t.Errorf("order %q, want %q", w.order, want)
	}

	answer = false
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
