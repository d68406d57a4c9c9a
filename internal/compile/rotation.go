package compile

import (
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// rotation is what a server's hitless key rotation (spec.Server.Rotation)
// puts in host states: in its own, the generation to make a key for and
// the phase with the key the control plane holds; in its peers', its next
// key beside the current one (Peer.NextPublicKey). The zero value: none.
type rotation struct {
	gen   int64
	phase string // hoststate.RotationAnnounce, RotationCommit or ""
	next  string // the next public key, while phase is set
}

// loadRotation checks a server's rotation and reduces it to what host
// states show. Phases prepare and clear show only the generation: in the
// first the host makes its next key and no peer knows it yet, in the last
// every host drops its second device.
func loadRotation(field string, s *spec.Server) (rotation, error) {
	r := s.Rotation
	if r == nil {
		return rotation{}, nil
	}
	field += ".rotation"
	if r.Generation < 1 {
		return rotation{}, inputErr(field+".generation", "%d is not a key generation (1 or more)", r.Generation)
	}
	out := rotation{gen: r.Generation}
	switch r.Phase {
	case spec.RotationPrepare, spec.RotationClear:
		return out, nil
	case spec.RotationAnnounce:
		out.phase = hoststate.RotationAnnounce
	case spec.RotationCommit:
		out.phase = hoststate.RotationCommit
	default:
		return rotation{}, inputErr(field+".phase", "%q is not one of %s, %s, %s, %s", r.Phase,
			spec.RotationPrepare, spec.RotationAnnounce, spec.RotationCommit, spec.RotationClear)
	}
	if _, err := wgtypes.ParseKey(r.NextPublicKey); err != nil {
		return rotation{}, inputErr(field+".nextPublicKey", "phase %s needs the next public key: %v", r.Phase, err)
	}
	if _, err := wgtypes.ParseKey(s.PublicKey); err != nil {
		return rotation{}, inputErr(field, "phase %s needs the server's public key: %v", r.Phase, err)
	}
	if out.phase == hoststate.RotationCommit && s.PublicKey != r.NextPublicKey {
		return rotation{}, inputErr(field+".nextPublicKey", "phase %s: the server's public key must be the next one", r.Phase)
	}
	if out.phase == hoststate.RotationAnnounce && s.PublicKey == r.NextPublicKey {
		return rotation{}, inputErr(field+".nextPublicKey", "phase %s: the next key is the current one", r.Phase)
	}
	if port := s.WireGuardPort; port == 65535 {
		return rotation{}, inputErr(field, "wireguardPort %d leaves no port for the second WireGuard device of a key rotation", port)
	}
	out.next = r.NextPublicKey
	return out, nil
}
