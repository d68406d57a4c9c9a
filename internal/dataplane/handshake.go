package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The first handshake of a new peer.
//
// Both hosts of a new encrypted path add each other within milliseconds
// (they get their desired states from one fan-out). If both initiated at
// once, the two initiations would cross, and on our machines that goes
// wrong in two ways: each host answers the other's initiation, which
// overwrites its own pending one, so both responses are refused and nothing
// happens until WireGuard retries after REKEY_TIMEOUT (5 s); or, worse,
// wireguard-go's parallel handshake workers race on the peer's handshake
// state and one host keeps a session whose receiving index was dropped, so
// the path carries one direction only until WireGuard notices after 15 s
// (both seen in the lab: bench/RESULTS.md, "Path setup").
//
// So only one host initiates: the one whose public key sorts lower. It
// adds the peer with its persistent keepalive, which makes wireguard-go
// initiate at once, and if the other host did not know it yet (the
// initiation is dropped), it tries again after each of lowerRetries by
// re-adding the peer, which gives it fresh handshake state and an immediate
// initiation.
// The higher host adds the peer without a keepalive and waits; it gets its
// keepalive once the first handshake is done, and initiates itself only if
// none came after higherInitiateAfter (the lower host may believe in an
// older session, as after a peer was removed by hand on this host). While
// a peer is re-added its traffic is dropped (no peer owns the allowed
// IPs): fail closed, never plaintext.
var (
	// lowerRetries are the waits, after the peer was added and then after
	// each retry, before the lower host initiates again while there is no
	// handshake: at 0.15, 0.4, 1, 2, 4.5 and 9 s.
	lowerRetries = []time.Duration{150 * time.Millisecond, 250 * time.Millisecond, 600 * time.Millisecond, time.Second, 2500 * time.Millisecond, 4500 * time.Millisecond}
	// higherInitiateAfter is when the higher host initiates itself: apart
	// from the lower host's times, so that the two do not cross.
	higherInitiateAfter = 3200 * time.Millisecond
)

// handshakeWatch is how long a peer without a handshake is watched before
// it is left to WireGuard's own timers (and to data, which makes
// WireGuard initiate).
const handshakeWatch = 30 * time.Second

// initiates tells whether a device with private key own starts the first
// handshake with peer.
func initiates(own, peer wgtypes.Key) bool {
	mine := own.PublicKey()
	return bytes.Compare(mine[:], peer[:]) < 0
}

// firstKeepalive is a new peer's keepalive until its first handshake:
// only the host that starts that handshake keeps alive from the start.
func firstKeepalive(own, peer wgtypes.Key) time.Duration {
	if initiates(own, peer) {
		return PeerKeepalive
	}
	return 0
}

func (dp *Dataplane) firstKeepalive(peer wgtypes.Key) time.Duration {
	return firstKeepalive(dp.key, peer)
}

// stall is a peer waiting for its first handshake.
type stall struct {
	added, last time.Time // last: the last (re)initiation
	retries     int
}

// stallKey is a peer of one of the host's WireGuard devices.
type stallKey struct {
	dev string
	key wgtypes.Key
}

// watchStall starts watching a peer just added to device dev for its
// first handshake.
func (dp *Dataplane) watchStall(dev string, k wgtypes.Key) {
	if dp.stalls == nil {
		dp.stalls = map[stallKey]*stall{}
	}
	now := time.Now()
	dp.stalls[stallKey{dev, k}] = &stall{added: now, last: now}
}

// HandshakeCheck is what one RetryStalledHandshakes call saw and did, by
// server.
type HandshakeCheck struct {
	// Completed are peers watched since they were added that now have
	// their first handshake: their paths just came up.
	Completed []string
	// Retried are peers whose handshake this host (re)started.
	Retried []string
	// Moved are peers whose routes moved from one WireGuard device to
	// the other since the last call (a key rotation under way): the
	// control plane moves the rotation on when it hears of it.
	Moved []string
}

// RetryStalledHandshakes drives the first handshakes of new peers (see
// above): it re-initiates when this host's turn comes, and gives the
// higher host its keepalive once the handshake is done. It does nothing,
// not even read the device, unless peers were added and not all of them
// have a handshake yet, so calling it often is cheap.
func (dp *Dataplane) RetryStalledHandshakes(now time.Time) (HandshakeCheck, error) {
	var hc HandshakeCheck
	dp.mu.Lock()
	defer dp.mu.Unlock()
	var errs []error
	if len(dp.stalls) > 0 {
		devs := map[string]bool{}
		for k := range dp.stalls {
			devs[k.dev] = true
		}
		for _, name := range slices.Sorted(maps.Keys(devs)) {
			if err := dp.retryStalledOn(name, now, &hc); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// A key rotation under way: move routes to the device that has its
	// handshake (see rotation.go).
	if err := dp.switchRoutes(now); err != nil {
		errs = append(errs, err)
	}
	hc.Moved, dp.moved = dp.moved, nil
	return hc, errors.Join(errs...)
}

func (dp *Dataplane) retryStalledOn(name string, now time.Time, hc *HandshakeCheck) error {
	dev, err := dp.wg.Device(name)
	if err != nil {
		for k := range dp.stalls {
			if k.dev == name {
				delete(dp.stalls, k)
			}
		}
		return fmt.Errorf("read WireGuard device %s: %w", name, err)
	}
	var cfg wgtypes.Config
	present := map[wgtypes.Key]bool{}
	var retried []string
	for _, p := range dev.Peers {
		present[p.PublicKey] = true
		sk := stallKey{name, p.PublicKey}
		s := dp.stalls[sk]
		if !p.LastHandshakeTime.IsZero() {
			if s != nil {
				hc.Completed = append(hc.Completed, dp.serverName(p.PublicKey))
				delete(dp.stalls, sk)
				if p.PersistentKeepaliveInterval != PeerKeepalive {
					ka := PeerKeepalive
					cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: p.PublicKey, UpdateOnly: true, PersistentKeepaliveInterval: &ka})
				}
			}
			continue
		}
		if s == nil {
			continue
		}
		due, more := retryDue(initiates(dev.PrivateKey, p.PublicKey), s, now)
		if !more || now.Sub(s.added) > handshakeWatch {
			// Left to WireGuard: the peer keeps alive by now (the
			// initiator from the start, the other host since its retry).
			delete(dp.stalls, sk)
			continue
		}
		if !due {
			continue
		}
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true}, readdPeer(p))
		s.retries, s.last = s.retries+1, now
		retried = append(retried, dp.serverName(p.PublicKey))
	}
	for k := range dp.stalls {
		if k.dev == name && !present[k.key] {
			delete(dp.stalls, k)
		}
	}
	hc.Retried = append(hc.Retried, retried...)
	if len(cfg.Peers) == 0 {
		return nil
	}
	if err := dp.wg.ConfigureDevice(name, cfg); err != nil {
		return fmt.Errorf("configure WireGuard device %s: %w", name, err)
	}
	if len(retried) > 0 {
		dp.log.Info("initiated WireGuard handshakes again", "name", name, "peers", strings.Join(retried, ", "))
	}
	return nil
}

// retryDue tells whether the peer's handshake is to be initiated again
// now, and whether more retries may follow.
func retryDue(initiator bool, s *stall, now time.Time) (due, more bool) {
	if initiator {
		if s.retries >= len(lowerRetries) {
			return false, false
		}
		return now.Sub(s.last) >= lowerRetries[s.retries], true
	}
	if s.retries > 0 {
		return false, false
	}
	return now.Sub(s.added) >= higherInitiateAfter, true
}

// readdPeer is the configuration that adds p again as it is, with the
// keepalive that makes wireguard-go initiate at once.
func readdPeer(p wgtypes.Peer) wgtypes.PeerConfig {
	ka := PeerKeepalive
	pc := wgtypes.PeerConfig{
		PublicKey:                   p.PublicKey,
		Endpoint:                    p.Endpoint,
		ReplaceAllowedIPs:           true,
		AllowedIPs:                  p.AllowedIPs,
		PersistentKeepaliveInterval: &ka,
	}
	if p.PresharedKey != (wgtypes.Key{}) {
		psk := p.PresharedKey
		pc.PresharedKey = &psk
	}
	return pc
}

// serverName names a peer by its server, or by its key when the applied
// state does not know it.
func (dp *Dataplane) serverName(k wgtypes.Key) string {
	if s, ok := dp.servers[k]; ok {
		return s
	}
	return k.String()
}
