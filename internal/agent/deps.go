package agent

import (
	"context"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/dataplane"
)

// ControlPlane is what the agent needs from the Corridor server. The real
// one is *api.Client; a join-token client is used for Join only, an mTLS
// client for the rest.
type ControlPlane interface {
	Join(ctx context.Context, req api.JoinRequest) (api.JoinResponse, error)
	// Desired long-polls the host's desired state: it answers when the
	// revision differs from index, or after wait with the same revision.
	Desired(ctx context.Context, name string, index int64, wait time.Duration) (api.DesiredState, error)
	ReportStatus(ctx context.Context, name string, st api.Status) error
}

// Renewer is a control plane that renews the agent's client certificate
// over mTLS, authorised by the current one (no join token). *Failover is
// one; a ControlPlane that is not leaves the certificate to expire.
type Renewer interface {
	Renew(ctx context.Context, name string, req api.RenewRequest) (api.JoinResponse, error)
}

// Guests is the guest runtime as the agent drives it. Ensure and Remove
// must be idempotent: the agent calls them again on every repair pass.
type Guests interface {
	// Ensure makes the guest exist and its program run, as g says.
	Ensure(ctx context.Context, g compile.Guest) error
	// Remove stops the guest and removes everything made for it. The
	// agent removes several guests at once: Remove must be safe to call
	// concurrently for different tasks.
	Remove(ctx context.Context, task string) error
	// List gives the task IDs of the guests that exist on this host,
	// whether or not they are desired.
	List(ctx context.Context) ([]string, error)
	// Status is the live state of one guest.
	Status(task string) api.TaskStatus
}

// Dataplane is the host's data plane: WireGuard, VXLAN, routes, nftables.
// Apply takes the whole desired state, reconciles by diff and may be called
// again with the same state; that is how drift is repaired.
type Dataplane interface {
	Apply(ctx context.Context, st compile.HostState) error
	Status(ctx context.Context) (DataplaneStatus, error)
	// RetryStalledHandshakes restarts WireGuard handshakes that crossed
	// and tells which new peers came up (see
	// dataplane.RetryStalledHandshakes). It is called often, and is cheap
	// when no peer waits.
	RetryStalledHandshakes(now time.Time) (dataplane.HandshakeCheck, error)
	// Key is the host's WireGuard public key (base64) and the generation
	// it was made for; only the public key ever leaves the host.
	Key() (publicKey string, generation int64)
	// PrepareKey makes the next key pair of a hitless rotation to
	// generation, on the host only (see dataplane.PrepareKey); a
	// generation not above the current or next key's does nothing. The
	// next Apply brings up the second device with it, and the Apply of a
	// state whose PublicKey is the next key commits it.
	PrepareKey(generation int64) error
	// NextKey is the public key of the rotation under way and its
	// generation; ok is false when there is none.
	NextKey() (publicKey string, generation int64, ok bool)
}

// DataplaneStatus is the live part of the data plane the agent reports.
type DataplaneStatus struct {
	Peers []api.PeerStatus
	Drops []api.DropCount
	// WireGuardMode is the WireGuard device's kind: kernel, userspace
	// (wireguard-go) or absent (none yet).
	WireGuardMode string
	// FlowOffload, OffloadedFlows and OffloadedEncrypted:
	// dataplane.Status's.
	FlowOffload        string
	OffloadedFlows     int
	OffloadedEncrypted int
}
