package dataplane

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Crossed handshakes. Both hosts of a new encrypted path add each other in
// the same millisecond (they get their desired states from one fan-out),
// and both initiate at once (PeerKeepalive). Each then answers the other's
// initiation, which overwrites its own pending one, so both responses are
// rejected as invalid and both hosts end up responders waiting for a
// confirmation that never comes. WireGuard retries only after REKEY_TIMEOUT
// (5 s), and a first connection through the path waits that long.
//
// The host whose public key sorts lower resolves it: a peer that has had
// no handshake for HandshakeStallAfter is removed and added again in one
// configuration call, which gives it fresh handshake state and makes it
// initiate at once; the other host, whose own initiation is younger than
// REKEY_TIMEOUT, does not initiate back, so the two cannot cross again.
// While the peer is re-added its traffic is dropped (no peer owns the
// allowed IPs): fail closed, never plaintext.
const (
	// HandshakeStallAfter is how long a peer may wait for its first
	// handshake before it is retried.
	HandshakeStallAfter = time.Second
	// handshakeRetries bounds the retries of one peer: a peer whose host
	// does not know us yet will initiate itself when it learns of us, and
	// WireGuard's own retries go on meanwhile.
	handshakeRetries = 3
	// handshakeWatch is how long a peer that never handshakes is watched
	// (by both hosts) before it is left to WireGuard's own timers.
	handshakeWatch = 30 * time.Second
)

// stall is a peer waiting for its first handshake.
type stall struct {
	first, last time.Time // first seen without a handshake; last retry
	retries     int
}

// watchStall starts watching a peer just added for its first handshake.
func (dp *Dataplane) watchStall(k wgtypes.Key) {
	if dp.stalls == nil {
		dp.stalls = map[wgtypes.Key]*stall{}
	}
	now := time.Now()
	dp.stalls[k] = &stall{first: now, last: now}
	dp.watchHandshakes = true
}

// HandshakeCheck is what one RetryStalledHandshakes call saw and did, by
// server.
type HandshakeCheck struct {
	// Completed are peers watched since they were added that now have
	// their first handshake: their paths just came up.
	Completed []string
	// Retried are peers whose handshake was restarted.
	Retried []string
}

// RetryStalledHandshakes restarts the handshake of peers that have waited
// for their first one longer than HandshakeStallAfter, when this host is
// the one that breaks the tie (see above). It does nothing, not even read
// the device, unless peers were added since every peer last completed a
// handshake, so calling it often is cheap.
func (dp *Dataplane) RetryStalledHandshakes(now time.Time) (HandshakeCheck, error) {
	var hc HandshakeCheck
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if !dp.watchHandshakes {
		return hc, nil
	}
	name := dp.cfg.WireGuardName
	dev, err := dp.wg.Device(name)
	if err != nil {
		return hc, fmt.Errorf("read WireGuard device %s: %w", name, err)
	}
	if dp.stalls == nil {
		dp.stalls = map[wgtypes.Key]*stall{}
	}
	mine := dp.key.PublicKey()
	var cfg wgtypes.Config
	watching := false
	present := map[wgtypes.Key]bool{}
	for _, p := range dev.Peers {
		present[p.PublicKey] = true
		if !p.LastHandshakeTime.IsZero() {
			if _, ok := dp.stalls[p.PublicKey]; ok {
				hc.Completed = append(hc.Completed, dp.serverName(p.PublicKey))
				delete(dp.stalls, p.PublicKey)
			}
			continue
		}
		s := dp.stalls[p.PublicKey]
		if s == nil {
			dp.stalls[p.PublicKey] = &stall{first: now, last: now}
			watching = true
			continue
		}
		if s.retries >= handshakeRetries || now.Sub(s.first) > handshakeWatch {
			continue
		}
		watching = true
		if now.Sub(s.last) < HandshakeStallAfter || bytes.Compare(mine[:], p.PublicKey[:]) > 0 {
			continue
		}
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true}, readdPeer(p))
		s.last, s.retries = now, s.retries+1
		hc.Retried = append(hc.Retried, dp.serverName(p.PublicKey))
	}
	for k := range dp.stalls {
		if !present[k] {
			delete(dp.stalls, k)
		}
	}
	dp.watchHandshakes = watching
	if len(cfg.Peers) == 0 {
		return hc, nil
	}
	if err := dp.wg.ConfigureDevice(name, cfg); err != nil {
		return hc, fmt.Errorf("retry WireGuard handshakes on %s: %w", name, err)
	}
	dp.log.Info("retried stalled WireGuard handshakes", "name", name, "peers", strings.Join(hc.Retried, ", "), "after", HandshakeStallAfter)
	return hc, nil
}

// readdPeer is the configuration that adds p again exactly as it is.
func readdPeer(p wgtypes.Peer) wgtypes.PeerConfig {
	ka := p.PersistentKeepaliveInterval
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
