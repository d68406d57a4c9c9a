package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/corridor-dev/corridor/internal/atomicfile"
)

// Hitless key rotation (docs/architecture.md, "Hitless key rotation").
//
// One WireGuard device cannot carry two keys of one host: it has one
// private key, and its allowed IPs map each remote guest to one peer, for
// sending and for what it accepts. So a rotation uses a second device on
// every host concerned, for as long as it lasts: the rotating host R and
// each of its peers Q bring up their second device (SpareName, listen
// port WireGuardPort+1); R's second device carries R's next key, Q's its
// own key; each pair of second devices talks only to each other (a peer's
// endpoint port+1), as the first devices do, so that no device ever sees
// one public key from two devices of the other host (which would make
// WireGuard roam between them and lose packets).
//
//  1. R makes its next key itself (PrepareKey: the private key is on R's
//     disk only, NextKeyFile) and brings up its second device with it and
//     every peer; its status reports the next public key.
//  2. Announce: Q's state names R's next key (Peer.NextPublicKey); Q adds
//     it on its second device with R's guests as allowed IPs (a trie of
//     its own, so the first device keeps them for R's current key).
//  3. Each host moves its table 5181 routes to the other host's guests
//     onto the second device only once that device has a handshake with
//     the peer (switchRoutes, route by route with "replace": never a
//     moment without a route). Until then the first device carries the
//     traffic. Both devices are encrypted devices for the firewall and
//     the ip rules, and have loose reverse-path filtering, so a packet in
//     flight on either is accepted whichever device the receiver routes
//     by.
//  4. Commit: when every side has moved, the control plane holds the next
//     key as R's current one (State.PublicKey, phase commit). R writes it
//     as its key and puts it on its first device (which carries nothing by
//     then), Q replaces R's old key by the new one on its first device;
//     after their handshake each side moves its routes back to the first
//     device.
//  5. When every side is back, the control plane clears the phase and
//     the peers' next keys; the second devices go.
//
// A rotation that the control plane leaves half done (it is down) stays
// in phase 2-3 or 4: both generations work meanwhile, and it goes on when
// the control plane returns. The control plane runs one rotation at a time
// in the fleet, so a host's second device serves one rotation only.

// NextKeyFile and NextKeyGenerationFile hold, beside KeyFile, the next key
// of a rotation under way and the generation it is made for.
const (
	NextKeyFile           = "wireguard.next.key"
	NextKeyGenerationFile = "wireguard.next.generation"
)

// handshakeFresh is how old a handshake may be for its device to take a
// peer's routes during a rotation (WireGuard's REJECT_AFTER_TIME).
const handshakeFresh = 180 * time.Second

// SpareName is the name of the second WireGuard device of a key rotation:
// the first device's name followed by "+" (corw0 -> corw0+; a 15-byte
// name loses its last byte). No device name of ours has a "+", so the
// second device of one host never takes the name of another host's first
// (lab servers on one machine share the UAPI socket directory).
func SpareName(name string) string {
	if len(name) >= 15 {
		name = name[:14]
	}
	return name + "+"
}

// wgNames are the names of both WireGuard devices: the firewall and the
// ip rules treat them alike, whether the second one exists or not.
func (dp *Dataplane) wgNames() []string {
	return []string{dp.cfg.WireGuardName, SpareName(dp.cfg.WireGuardName)}
}

// loadNextKey reads the next key of a rotation under way, if any.
func loadNextKey(dir string) (*wgtypes.Key, int64, error) {
	p := filepath.Join(dir, NextKeyFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read next key file: %w", err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o077 != 0 {
		return nil, 0, fmt.Errorf("next key file %s is readable by others (or unreadable): run chmod 600 on it", p)
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, 0, fmt.Errorf("next key file %s: %w", p, err)
	}
	gb, err := os.ReadFile(filepath.Join(dir, NextKeyGenerationFile))
	if err != nil {
		return nil, 0, fmt.Errorf("read next key generation: %w", err)
	}
	g, err := strconv.ParseInt(strings.TrimSpace(string(gb)), 10, 64)
	if err != nil || g < 0 {
		return nil, 0, fmt.Errorf("next key generation file holds %q, not a generation", strings.TrimSpace(string(gb)))
	}
	return &k, g, nil
}

func (dp *Dataplane) removeNextKeyFiles() error {
	for _, f := range []string{NextKeyFile, NextKeyGenerationFile} {
		if err := os.Remove(filepath.Join(dp.cfg.StateDir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", f, err)
		}
	}
	return nil
}

// PrepareKey makes the next key pair of a hitless rotation to generation,
// unless the current key or the next one is already of that generation or
// a later one. The private key goes to NextKeyFile (mode 0600) only; the
// current key stays in use. The next Apply brings up the second device
// with it, and NextKey reports its public key for the control plane to
// announce.
func (dp *Dataplane) PrepareKey(generation int64) error {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if generation <= dp.keyGen || (dp.next != nil && generation <= dp.nextGen) {
		return nil
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return fmt.Errorf("generate WireGuard key: %w", err)
	}
	// Generation file second: a crash in between leaves a next key
	// without its generation, which loadNextKey refuses loudly rather
	// than guessing; the key file is 0600 from its creation.
	if err := atomicfile.Write(filepath.Join(dp.cfg.StateDir, NextKeyFile), []byte(k.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("write next key file: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dp.cfg.StateDir, NextKeyGenerationFile), []byte(strconv.FormatInt(generation, 10)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write next key generation: %w", err)
	}
	dp.keyMu.Lock()
	dp.next, dp.nextGen = &k, generation
	dp.keyMu.Unlock()
	dp.changed("made the next WireGuard key", "generation", generation, "nextPublicKey", k.PublicKey().String())
	return nil
}

// NextKey is the public key of the rotation under way and its generation;
// ok is false when there is none.
func (dp *Dataplane) NextKey() (pub wgtypes.Key, generation int64, ok bool) {
	dp.keyMu.RLock()
	defer dp.keyMu.RUnlock()
	if dp.next == nil {
		return wgtypes.Key{}, 0, false
	}
	return dp.next.PublicKey(), dp.nextGen, true
}

// promote makes the next key the current one, on disk first: the control
// plane has committed it (d.publicKey is its public key). Called with mu.
func (dp *Dataplane) promote() error {
	k, gen := *dp.next, dp.nextGen
	old, err := dp.installKey(k, gen, func() { dp.next, dp.nextGen = nil, 0 })
	if err != nil {
		return err
	}
	if err := dp.removeNextKeyFiles(); err != nil {
		return err
	}
	dp.changed("committed the next WireGuard key", "generation", gen, "publicKey", k.PublicKey().String(), "previous", old.String())
	return nil
}

// installKey makes k, of generation gen, the host's current key, on disk
// first: KeyFile (mode 0600) is written, then dp.key follows it at once,
// so that what this host uses and reports is always what a restart would
// load; then KeyGenerationFile, then dp.keyGen, under keyMu together with
// also (when not nil). It returns the previous public key. Called with mu.
func (dp *Dataplane) installKey(k wgtypes.Key, gen int64, also func()) (old wgtypes.Key, err error) {
	if err := atomicfile.Write(filepath.Join(dp.cfg.StateDir, KeyFile), []byte(k.String()+"\n"), 0o600); err != nil {
		return old, fmt.Errorf("write key file: %w", err)
	}
	dp.keyMu.Lock()
	old = dp.key.PublicKey()
	dp.key = k
	dp.keyMu.Unlock()
	if err := atomicfile.Write(filepath.Join(dp.cfg.StateDir, KeyGenerationFile), []byte(strconv.FormatInt(gen, 10)+"\n"), 0o600); err != nil {
		return old, fmt.Errorf("write key generation: %w", err)
	}
	dp.keyMu.Lock()
	dp.keyGen = gen
	if also != nil {
		also()
	}
	dp.keyMu.Unlock()
	return old, nil
}

// ownRotation tells whether this host's own key rotation is under way.
func (dp *Dataplane) ownRotation(d *desired) bool {
	return dp.next != nil || d.rotationPhase != ""
}

// spareWanted tells whether the second device is needed for d.
func (dp *Dataplane) spareWanted(d *desired) bool {
	if dp.ownRotation(d) {
		return true
	}
	for _, p := range d.peers {
		if p.hasNext {
			return true
		}
	}
	return false
}

// spareKey is the private key of the second device.
func (dp *Dataplane) spareKey() wgtypes.Key {
	if dp.next != nil {
		return *dp.next
	}
	return dp.key
}

func nextPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr(), ap.Port()+1)
}

// sparePeers are the peers of the second device: during this host's own
// rotation every peer under its current key; else the rotating peers under
// their next keys. Endpoints are the peers' second devices (port+1).
func (dp *Dataplane) sparePeers(d *desired) []peerWant {
	var out []peerWant
	own := dp.ownRotation(d)
	for _, p := range d.peers {
		w := p
		w.endpoint = nextPort(p.endpoint)
		switch {
		case own:
		case p.hasNext:
			w.key = p.next
		default:
			continue
		}
		out = append(out, w)
	}
	return out
}

// spareTarget tells whether peer p's routes are to move to the second
// device (phases announce and before: the new generation is there) or
// back to the first (commit).
func (dp *Dataplane) spareTarget(d *desired, p peerWant) bool {
	if dp.ownRotation(d) {
		return dp.next != nil
	}
	return p.hasNext && p.next != p.key
}

// chooseRoutes gives, per peer's allowed IP, the device its route takes:
// the target device of the rotation once it has a fresh handshake with
// the peer, else the other one if it has one, else the first device (the
// packets then wait for a handshake there: fail closed as ever).
func (dp *Dataplane) chooseRoutes(d *desired, home, spare netlink.Link, now time.Time) (map[netip.Prefix]netlink.Link, map[string]string, error) {
	out := map[netip.Prefix]netlink.Link{}
	via := map[string]string{}
	hsHome, hsSpare := map[wgtypes.Key]bool{}, map[wgtypes.Key]bool{}
	if spare != nil {
		for _, x := range []struct {
			name string
			hs   map[wgtypes.Key]bool
		}{{home.Attrs().Name, hsHome}, {spare.Attrs().Name, hsSpare}} {
			dev, err := dp.wg.Device(x.name)
			if err != nil {
				return nil, nil, fmt.Errorf("read WireGuard device %s: %w", x.name, err)
			}
			for _, p := range dev.Peers {
				if !p.LastHandshakeTime.IsZero() && now.Sub(p.LastHandshakeTime) < handshakeFresh {
					x.hs[p.PublicKey] = true
				}
			}
		}
	}
	own := dp.ownRotation(d)
	for _, p := range d.peers {
		link := home
		if spare != nil {
			spareKey := p.key
			if !own && p.hasNext {
				spareKey = p.next
			}
			onSpare := own || p.hasNext
			switch {
			case !onSpare:
			case dp.spareTarget(d, p) && hsSpare[spareKey]:
				link = spare
			case !dp.spareTarget(d, p) && !hsHome[p.key] && hsSpare[spareKey]:
				link = spare
			}
		}
		via[p.server] = link.Attrs().Name
		for _, pre := range p.allowedIPs {
			out[pre] = link
		}
	}
	return out, via, nil
}

// syncEncryptRoutes makes table 5181 route each remote guest reached
// encrypted by the device chooseRoutes picks.
func (dp *Dataplane) syncEncryptRoutes(d *desired, home, spare netlink.Link, now time.Time) error {
	routes, via, err := dp.chooseRoutes(d, home, spare, now)
	if err != nil {
		return err
	}
	if err := dp.syncRoutesVia(TableEncrypt, routes); err != nil {
		return err
	}
	for server, dev := range via {
		if old, ok := dp.via[server]; ok && old != dev {
			dp.moved = append(dp.moved, server)
		}
	}
	dp.via = via
	// The ingress legs follow the encrypted routes' device (ingress.go).
	return dp.syncIngressTable(d, routes)
}

// switchRoutes re-chooses the encrypted routes of the last applied state
// while a rotation is under way (called often, from
// RetryStalledHandshakes); otherwise it does nothing. Called with mu.
func (dp *Dataplane) switchRoutes(now time.Time) error {
	d := dp.lastDesired
	if d == nil || !dp.spareWanted(d) {
		return nil
	}
	home, err := dp.nl.LinkByName(dp.cfg.WireGuardName)
	if err != nil {
		return fmt.Errorf("look up %s: %w", dp.cfg.WireGuardName, err)
	}
	spare, err := dp.nl.LinkByName(SpareName(dp.cfg.WireGuardName))
	if err != nil {
		return fmt.Errorf("look up %s: %w", SpareName(dp.cfg.WireGuardName), err)
	}
	return dp.syncEncryptRoutes(d, home, spare, now)
}

// WireGuardAddr is put (/32, scope link) on both WireGuard devices: the
// kernel's loose reverse-path check refuses every packet whose source is
// routed by another device when the arrival device has no address at all.
var WireGuardAddr = netip.MustParseAddr("169.254.1.2")

// wgSysctls sets a WireGuard device's sysctls, and its address, before it
// gets its peers, so that no packet arrives on it before they hold:
// src_valid_mark (see doc.go), and loose reverse-path filtering: during a
// key rotation a packet may arrive on one device while this host routes
// its source by the other (the effective mode is the stricter of "all"
// and the device's: strict on "all" would still refuse it). WireGuard
// itself accepts an inner source only from the peer whose allowed IPs
// hold it, which is stronger than the reverse-path check.
func (dp *Dataplane) wgSysctls(name string) error {
	l, err := dp.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return dp.nl.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list %s addresses: %w", name, err)
	}
	has := false
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == WireGuardAddr {
			has = true
		}
	}
	if !has {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: ipOf(WireGuardAddr), Mask: net.CIDRMask(32, 32)}, Scope: int(netlink.SCOPE_LINK)}
		if err := dp.nl.AddrAdd(l, a); err != nil {
			return fmt.Errorf("add %s/32 to %s: %w", WireGuardAddr, name, err)
		}
		dp.changed("added WireGuard device address", "dev", name, "addr", WireGuardAddr)
	}
	keys, err := setSysctls(dp.ns, []sysctl{
		{Key: "net/ipv4/conf/" + name + "/src_valid_mark", Value: "1"},
		{Key: "net/ipv4/conf/" + name + "/rp_filter", Value: "2"},
	})
	for _, k := range keys {
		dp.changed("set sysctl", "key", k)
	}
	return err
}

// applyWireGuard brings the WireGuard devices to d: the commit of this
// host's next key, the first device, the second while a rotation needs
// it, and the routes of table 5181 between them. The second device goes
// only after no route uses it. It returns the first device's link and
// the second's (nil when there is none). Called with mu.
func (dp *Dataplane) applyWireGuard(ctx context.Context, d *desired, mtu int) (netlink.Link, netlink.Link, error) {
	if dp.next != nil && d.hasPublicKey && d.publicKey == dp.next.PublicKey() {
		if err := dp.promote(); err != nil {
			return nil, nil, err
		}
	}
	home, err := dp.ensureWireGuard(ctx, dp.cfg.WireGuardName, mtu)
	if err != nil {
		return nil, nil, err
	}
	if err := dp.wgSysctls(dp.cfg.WireGuardName); err != nil {
		return nil, nil, err
	}
	restarted := dp.restarted
	dp.restarted = false
	if err := dp.configureWireGuard(dp.cfg.WireGuardName, dp.key, d.listenPort, d.peers, restarted); err != nil {
		return nil, nil, err
	}
	spareName := SpareName(dp.cfg.WireGuardName)
	var spare netlink.Link
	if dp.spareWanted(d) {
		if spare, err = dp.ensureWireGuard(ctx, spareName, mtu); err != nil {
			return nil, nil, err
		}
		if err := dp.wgSysctls(spareName); err != nil {
			return nil, nil, err
		}
		restarted := dp.spareRestarted
		dp.spareRestarted = false
		if err := dp.configureWireGuard(spareName, dp.spareKey(), d.listenPort+1, dp.sparePeers(d), restarted); err != nil {
			return nil, nil, err
		}
		dp.spareUp = true
	}
	if err := dp.syncEncryptRoutes(d, home, spare, time.Now()); err != nil {
		return nil, nil, err
	}
	if spare == nil {
		dp.spareUp = false
		if _, err := dp.nl.LinkByName(spareName); err == nil {
			if err := dp.removeWireGuard(ctx, spareName); err != nil {
				return nil, nil, err
			}
			dp.changed("removed the second WireGuard device: no key rotation under way", "name", spareName)
		} else if dp.datapathPIDOf(spareName) != 0 {
			dp.stopDatapath(spareName)
		}
	}
	return home, spare, nil
}
