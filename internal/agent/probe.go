package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/capture"
	"github.com/corridor-dev/corridor/internal/probe"
)

// Prober runs probes for the local API: from inside a guest's network
// namespace it dials the destination with the marker while a capture on the
// host's underlay interface looks for that marker in clear.
type Prober struct {
	// GuestNetns gives the path of a task's guest network namespace.
	GuestNetns func(task string) string
	// Channel gives the host end of a VM task's probe port (a unix
	// socket), or "" for a task the host can enter (netns): a VM's probes
	// are run by a responder inside it (see probe.Serve).
	Channel func(task string) string
	// HostNetns is the path of the host's namespace, where the underlay
	// interface is; empty: the agent's own.
	HostNetns string
	// LocalAddr reports whether an overlay address is a guest of this
	// host: a probe to it never crosses the underlay, so seeing no packet
	// there proves nothing is wrong with the capture.
	LocalAddr func(netip.Addr) bool

	// startCapture and dial are capture.Start and probe.Dial, replaced in
	// tests.
	startCapture func(ctx context.Context, netns, ifname string, marker []byte) (stopCapture, error)
	dial         func(ctx context.Context, netns, network, addr string, marker []byte, timeout time.Duration) (probe.Result, error)
	remote       func(ctx context.Context, sock, network, addr string, marker []byte, timeout, grace time.Duration) (probe.Result, error)

	// mute remembers VMs whose probe port did not answer, so that a
	// verify run waits for each such VM once, not once per check.
	muteMu sync.Mutex
	mute   map[string]time.Time
}

// muteFor is how long a VM whose probe port did not answer is answered
// "skipped" without asking again.
const muteFor = 15 * time.Second

const noResponder = "the VM runs no probe responder (an image without corridor: build it with corridor image build --with-sample); its paths are proved from the other side"

// channelGrace is how long past its timeout a probe through a VM's port
// may take to answer (the guest is slower to schedule under TCG).
const channelGrace = 3 * time.Second

func (p *Prober) muted(task string) bool {
	p.muteMu.Lock()
	defer p.muteMu.Unlock()
	return time.Since(p.mute[task]) < muteFor
}

func (p *Prober) setMuted(task string) {
	p.muteMu.Lock()
	defer p.muteMu.Unlock()
	if p.mute == nil {
		p.mute = map[string]time.Time{}
	}
	for t, at := range p.mute {
		if time.Since(at) >= muteFor {
			delete(p.mute, t)
		}
	}
	p.mute[task] = time.Now()
}

func (p *Prober) channel(task string) string {
	if p.Channel == nil {
		return ""
	}
	return p.Channel(task)
}

// stopCapture ends a capture: whether the marker was seen, how many frames
// were scanned and how many the kernel dropped before they could be.
type stopCapture func() (seen bool, packets, dropped uint64, err error)

func realCapture(ctx context.Context, netns, ifname string, marker []byte) (stopCapture, error) {
	c, err := capture.Start(ctx, netns, ifname, marker)
	if err != nil {
		return nil, err
	}
	return func() (bool, uint64, uint64, error) {
		res, err := c.Stop()
		if err != nil {
			return false, res.Packets, res.Dropped, err
		}
		seen, err := res.Contains(marker)
		return seen, res.Packets, res.Dropped, err
	}, nil
}

// Probe runs one probe. req has been checked by the API (see checkProbe).
func (p *Prober) Probe(ctx context.Context, req api.ProbeRequest) (api.ProbeResult, error) {
	start, dial, remote := p.startCapture, p.dial, p.remote
	if start == nil {
		start = realCapture
	}
	if dial == nil {
		dial = probe.Dial
	}
	if remote == nil {
		remote = probe.Remote
	}
	to, err := netip.ParseAddr(req.ToAddr)
	if err != nil {
		return api.ProbeResult{}, fmt.Errorf("toAddr: %w", err)
	}
	// A VM's probes run inside it; one whose port did not answer lately is
	// not asked again (nor captured for).
	ch := p.channel(req.FromTask)
	if ch != "" && p.muted(req.FromTask) {
		return api.ProbeResult{Skipped: noResponder}, nil
	}
	// The capture runs from before the first packet to after the last:
	// capture.Start returns once its socket is bound.
	stop, err := start(ctx, p.HostNetns, req.CaptureIface, req.Marker)
	if err != nil {
		return api.ProbeResult{}, fmt.Errorf("capture on %s: %w", req.CaptureIface, err)
	}
	addr := net.JoinHostPort(to.String(), strconv.Itoa(req.Port))
	var res probe.Result
	var dialErr error
	if ch != "" {
		res, dialErr = remote(ctx, ch, req.Network, addr, req.Marker, req.Timeout, channelGrace)
	} else {
		res, dialErr = dial(ctx, p.GuestNetns(req.FromTask), req.Network, addr, req.Marker, req.Timeout)
	}
	seen, packets, dropped, capErr := stop()
	if errors.Is(dialErr, probe.ErrNoResponder) {
		p.setMuted(req.FromTask)
		return api.ProbeResult{Skipped: noResponder}, nil
	}
	if dialErr != nil {
		return api.ProbeResult{}, fmt.Errorf("probe from %s: %w", req.FromTask, dialErr)
	}
	if capErr != nil {
		return api.ProbeResult{}, fmt.Errorf("capture on %s: %w", req.CaptureIface, capErr)
	}

	out := api.ProbeResult{
		Connected:  res.Outcome == probe.Connected,
		Refused:    res.Outcome == probe.Refused,
		TimedOut:   res.Outcome == probe.Timeout,
		RTT:        res.RTT,
		MarkerSeen: seen,
	}
	local := p.LocalAddr != nil && p.LocalAddr(to)
	switch {
	case res.Outcome == probe.Failed:
		out.Error = "probe failed: " + res.Err
	// Unreachable and Prohibited stay as "not connected": the path is
	// closed, which is what a denied pair looks like (our routing tables
	// end in unreachable routes, fail closed).

	// "Marker not seen" is a claim of encryption: make sure the capture
	// could have seen it.
	case out.Connected && !seen && dropped > 0:
		out.Error = fmt.Sprintf("the capture on %s lost %d frames: the marker's absence is not proven", req.CaptureIface, dropped)
	case out.Connected && !seen && packets == 0 && !local:
		out.Error = fmt.Sprintf("the capture on %s saw no packet at all: wrong interface? the marker's absence is not proven", req.CaptureIface)
	}
	return out, nil
}
