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
	// PeerUnderlay gives the underlay address of the host of a remote
	// guest address (from the desired state), so that an encrypted pair
	// is proven by WireGuard frames to and from that host.
	PeerUnderlay func(netip.Addr) (netip.Addr, bool)

	// startCapture and dial are capture.Start and probe.Dial, replaced in
	// tests.
	startCapture func(ctx context.Context, netns, ifname string, marker []byte) (stopCapture, error)
	dial         func(ctx context.Context, netns, network, addr string, marker []byte, timeout time.Duration) (probe.Result, error)
	remote       func(ctx context.Context, sock, network, addr string, marker []byte, timeout, grace time.Duration) (probe.Result, error)

	// mute remembers VMs whose probe port never answered, so that a
	// verify run waits for each such VM once, not once per check. vms
	// queues the probes of each VM: its probe port (a QEMU socket
	// chardev) serves one client at a time, so a second concurrent probe
	// would wait unanswered and be mistaken for a missing responder.
	muteMu sync.Mutex
	mute   map[string]time.Time
	vms    map[string]*vmPort
}

// vmPort is one VM's probe port: a one-slot queue, and whether its
// responder ever answered.
type vmPort struct {
	turn     chan struct{}
	answered bool // under Prober.muteMu
}

// vm returns the queue of task's probe port.
func (p *Prober) vm(task string) *vmPort {
	p.muteMu.Lock()
	defer p.muteMu.Unlock()
	if p.vms == nil {
		p.vms = map[string]*vmPort{}
	}
	v := p.vms[task]
	if v == nil {
		v = &vmPort{turn: make(chan struct{}, 1)}
		p.vms[task] = v
	}
	return v
}

// muteFor is how long a VM whose probe port never answered is answered
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

// answered records that task's responder answered, or reports whether
// it ever did.
func (p *Prober) answered(v *vmPort, set bool) bool {
	p.muteMu.Lock()
	defer p.muteMu.Unlock()
	if set {
		v.answered = true
	}
	return v.answered
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

// captured is what a capture saw: whether the marker was seen, how many
// frames were scanned and how many the kernel dropped before they could
// be, and the WireGuard data frames per remote underlay address.
type captured struct {
	seen             bool
	packets, dropped uint64
	wireGuard        map[netip.Addr]uint64
}

// stopCapture ends a capture. A marker seen is reported even with an error.
type stopCapture func() (captured, error)

func realCapture(ctx context.Context, netns, ifname string, marker []byte) (stopCapture, error) {
	c, err := capture.Start(ctx, netns, ifname, marker)
	if err != nil {
		return nil, err
	}
	return func() (captured, error) {
		res, err := c.Stop()
		seen, cerr := res.Contains(marker)
		out := captured{seen: seen, packets: res.Packets, dropped: res.Dropped, wireGuard: res.WireGuard}
		return out, errors.Join(err, cerr)
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
	// A VM's probes run inside it, one at a time; one whose port never
	// answered is not asked again for a while (nor captured for).
	ch := p.channel(req.FromTask)
	var vm *vmPort
	if ch != "" {
		if p.muted(req.FromTask) {
			return api.ProbeResult{Skipped: noResponder}, nil
		}
		vm = p.vm(req.FromTask)
		select {
		case vm.turn <- struct{}{}:
			defer func() { <-vm.turn }()
		case <-ctx.Done():
			return api.ProbeResult{}, fmt.Errorf("probe from %s: waiting for the VM's probe port, busy with earlier probes: %w", req.FromTask, ctx.Err())
		}
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
		if dialErr == nil {
			p.answered(vm, true)
		}
	} else {
		res, dialErr = dial(ctx, p.GuestNetns(req.FromTask), req.Network, addr, req.Marker, req.Timeout)
	}
	got, capErr := stop()
	var peer netip.Addr
	if p.PeerUnderlay != nil {
		if pu, ok := p.PeerUnderlay(to); ok {
			peer = pu
		}
	}
	// A marker seen on the underlay is a fact whatever else failed: it is
	// always reported, with what went wrong beside it.
	if dialErr != nil || capErr != nil {
		out := api.ProbeResult{MarkerSeen: got.seen}
		switch {
		case errors.Is(dialErr, probe.ErrNoResponder) && !p.answered(vm, false):
			p.setMuted(req.FromTask)
			out.Skipped = noResponder
		case errors.Is(dialErr, probe.ErrNoResponder):
			out.Error = fmt.Sprintf("the VM's probe responder, which answered before, did not answer within %s: the probe is incomplete", req.Timeout+channelGrace)
		case dialErr != nil:
			out.Error = fmt.Sprintf("probe from %s: %v", req.FromTask, dialErr)
		default:
			out.Error = fmt.Sprintf("capture on %s: %v", req.CaptureIface, capErr)
		}
		if !got.seen {
			if out.Skipped != "" {
				return out, nil
			}
			return api.ProbeResult{}, errors.New(out.Error)
		}
		return out, nil
	}
	seen, packets, dropped := got.seen, got.packets, got.dropped

	out := api.ProbeResult{
		Connected:  res.Outcome == probe.Connected,
		Refused:    res.Outcome == probe.Refused,
		TimedOut:   res.Outcome == probe.Timeout,
		RTT:        res.RTT,
		MarkerSeen: seen,
	}
	if peer.IsValid() {
		out.PeerUnderlay = peer.String()
		out.WireGuardFrames = got.wireGuard[peer]
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

// PeerUnderlay reports the underlay address of the host of remote guest
// address addr in the current desired state: the endpoint of the
// WireGuard peer whose allowed IPs hold it, else the VXLAN entry listing
// it (see Prober.PeerUnderlay).
func (a *Agent) PeerUnderlay(addr netip.Addr) (netip.Addr, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.target == nil {
		return netip.Addr{}, false
	}
	// The lists as the state gives them: a derived state's (schema 1.6)
	// from its route groups.
	st := &a.target.State
	for i, ips := range st.PeerLists() {
		for _, pfx := range ips {
			if pfx.Contains(addr) {
				return st.Peers[i].Endpoint.Addr(), true
			}
		}
	}
	for i, gs := range st.VXLANLists() {
		for _, g := range gs {
			if g == addr {
				return st.VXLAN[i].Underlay, true
			}
		}
	}
	return netip.Addr{}, false
}
