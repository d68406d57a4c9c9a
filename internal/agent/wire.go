package agent

import (
	"context"
	"math"
	"net/netip"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/dataplane"
	"github.com/corridor-dev/corridor/internal/guest"
)

// GuestsOf adapts a guest runtime (internal/guest) to Guests.
func GuestsOf(r guest.Runtime) Guests { return guestRuntime{r} }

type guestRuntime struct{ guest.Runtime }

func (g guestRuntime) List(ctx context.Context) ([]string, error) {
	infos, err := g.Runtime.List(ctx)
	tasks := make([]string, 0, len(infos))
	for _, in := range infos {
		tasks = append(tasks, in.Task)
	}
	return tasks, err
}

// DataplaneOf adapts the host data plane (internal/dataplane) to
// Dataplane.
func DataplaneOf(dp *dataplane.Dataplane) Dataplane { return hostDataplane{dp} }

type hostDataplane struct{ dp *dataplane.Dataplane }

func (h hostDataplane) Apply(ctx context.Context, st compile.HostState) error {
	return h.dp.Apply(ctx, st)
}

func (h hostDataplane) OpenConns(addrs []netip.Addr) (int, error) { return h.dp.OpenConns(addrs) }

func (h hostDataplane) FlushConns(addrs []netip.Addr) (uint, error) { return h.dp.FlushConns(addrs) }

func (h hostDataplane) RetryStalledHandshakes(now time.Time) (dataplane.HandshakeCheck, error) {
	return h.dp.RetryStalledHandshakes(now)
}

func (h hostDataplane) Key() (string, int64) {
	k, gen := h.dp.Key()
	return k.String(), gen
}

func (h hostDataplane) PrepareKey(generation int64) error { return h.dp.PrepareKey(generation) }

func (h hostDataplane) NextKey() (string, int64, bool) {
	k, gen, ok := h.dp.NextKey()
	if !ok {
		return "", 0, false
	}
	return k.String(), gen, true
}

func (h hostDataplane) Status(ctx context.Context) (DataplaneStatus, error) {
	st, err := h.dp.Status(ctx)
	return convertDataplaneStatus(st), err
}

// convertDataplaneStatus keeps what the server is told: per peer its
// server (the public key when the peer is not in the applied state: someone
// added it by hand, which the next repair removes), key, handshake and
// bytes, and during a key rotation its device and whether its routes take
// it (the control plane moves the rotation on from these); every drop
// counter with its kind.
func convertDataplaneStatus(st dataplane.Status) DataplaneStatus {
	out := DataplaneStatus{WireGuardMode: st.Mode, FlowOffload: st.FlowOffload, OffloadedFlows: st.OffloadedFlows,
		OffloadedEncrypted: st.OffloadedEncrypted}
	for _, p := range st.Peers {
		server := p.Server
		if server == "" {
			server = "unknown:" + p.PublicKey
		}
		out.Peers = append(out.Peers, api.PeerStatus{
			Server: server, PublicKey: p.PublicKey, LastHandshake: p.LastHandshake, RxBytes: p.RxBytes, TxBytes: p.TxBytes,
			Spare: p.Spare, Routed: p.Routed,
		})
	}
	for _, d := range st.Drops {
		out.Drops = append(out.Drops, api.DropCount{
			Kind: d.Kind, App: d.App, FromClass: d.FromClass, ToClass: d.ToClass,
			Packets: int64(min(d.Packets, math.MaxInt64)),
			Bytes:   int64(min(d.Bytes, math.MaxInt64)),
		})
	}
	return out
}
