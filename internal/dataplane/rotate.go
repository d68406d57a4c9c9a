package dataplane

import (
	"errors"
	"fmt"
	"os"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Key rotation.
//
// RotateKey makes a new key pair on this host (the private key, as the
// first one, never leaves it) and puts it on corw0. The host's peers learn
// the new public key from their next desired state, once this host has
// reported it to the server. In between, the encrypted paths of this host
// are down, never plain: this host's sessions end with the old key
// (WireGuard expires them when the private key changes), its initiations
// under the new key are refused by peers that do not know it yet, and
// packets of encrypted pairs can only leave by corw0 and are only accepted
// from it. So a rotation costs each encrypted path about one fan-out of
// the control plane, and no plaintext.
//
// Every peer is added again as new, under the handshake rules of
// handshake.go computed with the new key: the host whose key now sorts
// lower initiates, and retries while the other host has not learnt the key
// yet; otherwise the peer, once it knows the new key, adds this host as a
// new peer and initiates itself.

// RotateKey replaces the host's WireGuard key with a new one made for
// generation, unless the key is already of that generation or a later one.
// The new key is on disk (mode 0600, replacing the old one, which is gone)
// before it is on the device, so that a restart never brings back a key
// the peers are being told to forget.
func (dp *Dataplane) RotateKey(generation int64) error {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if generation <= dp.keyGen {
		return nil
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return fmt.Errorf("generate WireGuard key: %w", err)
	}
	// Key first, then its generation: a crash in between leaves the new
	// key with the old generation, and the next state rotates once more,
	// which is harmless; the other order could keep an old key forever.
	// dp.key follows the file at once, so that what this host uses and
	// reports is always what a restart would load.
	old, err := dp.installKey(k, generation, nil)
	if err != nil {
		return err
	}

	name := dp.cfg.WireGuardName
	logArgs := []any{"name", name, "generation", generation, "publicKey", k.PublicKey().String(), "previous", old.String()}
	dev, err := dp.wg.Device(name)
	if errors.Is(err, os.ErrNotExist) {
		// No device yet: the next Apply makes it with the new key.
		dp.changed("made a new WireGuard key", logArgs...)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read WireGuard device %s: %w", name, err)
	}
	cfg := wgtypes.Config{PrivateKey: &k, ReplacePeers: true}
	for _, p := range dev.Peers {
		pc := readdPeer(p)
		ka := dp.firstKeepalive(p.PublicKey)
		pc.PersistentKeepaliveInterval = &ka
		cfg.Peers = append(cfg.Peers, pc)
		dp.watchStall(name, p.PublicKey)
	}
	if err := dp.wg.ConfigureDevice(name, cfg); err != nil {
		return fmt.Errorf("configure WireGuard device %s with the new key: %w", name, err)
	}
	dp.changed("rotated WireGuard key", append(logArgs, "peers", len(dev.Peers))...)
	return nil
}
