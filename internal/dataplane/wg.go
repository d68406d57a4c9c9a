package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// uapiDir is where wireguard-go puts its UAPI sockets and where wgctrl
// looks for them; it is shared by the whole machine.
const uapiDir = "/var/run/wireguard"

// How long a new datapath process may take to serve its device.
const datapathStartTimeout = 10 * time.Second

// PeerKeepalive is every peer's persistent keepalive, once the peer has had
// its first handshake. Besides keeping NAT mappings and the handshake fresh
// (status shows its age), setting it makes wireguard-go initiate at once,
// which is how the host that starts a new peer's first handshake starts it;
// the other host gets it only after that handshake (see handshake.go).
const PeerKeepalive = 25 * time.Second

func (dp *Dataplane) pidFile(name string) string {
	return filepath.Join(dp.cfg.StateDir, name+".pid")
}
func (dp *Dataplane) logFile(name string) string {
	return filepath.Join(dp.cfg.StateDir, name+".log")
}

// ensureWireGuard makes sure the WireGuard device name (the first device,
// or the second of a key rotation) exists, is served, has the MTU and is
// up. It returns its link.
func (dp *Dataplane) ensureWireGuard(ctx context.Context, name string, mtu int) (netlink.Link, error) {
	l, err := dp.nl.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		l = nil
	case err != nil:
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	if l != nil && l.Type() != "wireguard" {
		// A TUN: served by a datapath process if its UAPI socket answers.
		if _, err := dp.wg.Device(name); err != nil {
			dp.log.Warn("WireGuard device has no live datapath process; starting a new one", "name", name, "err", err)
			if err := dp.stopDatapath(name); err != nil {
				return nil, err
			}
			if err := dp.waitLinkGone(name, 3*time.Second); err != nil {
				if l, err2 := dp.nl.LinkByName(name); err2 == nil {
					if err := dp.nl.LinkDel(l); err != nil {
						return nil, fmt.Errorf("delete unserved %s: %w", name, err)
					}
				}
			}
			l = nil
		}
	}
	if l == nil {
		kernel := false
		if !dp.cfg.Userspace {
			err := dp.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}})
			switch {
			case err == nil:
				kernel = true
				dp.changed("created kernel WireGuard device", "name", name)
			case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL):
				dp.log.Debug("kernel has no WireGuard; using wireguard-go", "err", err)
			default:
				return nil, fmt.Errorf("create %s: %w", name, err)
			}
		}
		if !kernel {
			// Never take the socket of another host's device of that name
			// (the second device of a rotation is checked here only: the
			// agent checks both names at start).
			if err := nsrun.DoHandle(dp.ns, func() error { return ServedElsewhere(name) }); err != nil {
				return nil, fmt.Errorf("start %s: %w", name, err)
			}
			if err := dp.startDatapath(ctx, name, mtu); err != nil {
				return nil, err
			}
		}
		if name == dp.cfg.WireGuardName {
			dp.restarted = dp.last != nil
		} else {
			// Made again while a rotation used it (its process died):
			// its peers hold sessions with the old one. Made for a new
			// rotation: the first handshakes follow handshake.go's rule.
			dp.spareRestarted = dp.spareUp
		}
		if l, err = dp.nl.LinkByName(name); err != nil {
			return nil, fmt.Errorf("look up %s: %w", name, err)
		}
	}
	if l.Attrs().MTU != mtu {
		if err := dp.nl.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("set %s MTU %d: %w", name, mtu, err)
		}
		dp.changed("set MTU", "name", name, "mtu", mtu)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := dp.nl.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set %s up: %w", name, err)
		}
		dp.changed("set link up", "name", name)
	}
	return l, nil
}

// datapathArgs are the arguments of the datapath process of device name.
func (dp *Dataplane) datapathArgs(name string, mtu int) []string {
	args := []string{"datapath", "wireguard", "--name", name, "--mtu", strconv.Itoa(mtu)}
	if dp.cfg.NetNS != "" {
		args = append(args, "--netns", dp.cfg.NetNS)
	}
	if dp.cfg.Procs > 0 {
		args = append(args, "--procs", strconv.Itoa(dp.cfg.Procs))
	}
	return args
}

// startDatapath starts "corridor datapath wireguard" inside the host's
// namespace, in a session of its own so that it outlives the agent, and
// waits until its device answers on the UAPI socket.
func (dp *Dataplane) startDatapath(ctx context.Context, name string, mtu int) error {
	if err := dp.stopDatapath(name); err != nil {
		return err
	}
	bin := dp.cfg.Binary
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return fmt.Errorf("find the corridor binary for the datapath process: %w", err)
		}
	}
	logf, err := os.OpenFile(dp.logFile(name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open datapath log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, dp.datapathArgs(name, mtu)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	// The child inherits the network namespace of the thread that starts
	// it: all of its threads then live in the host's namespace, which is
	// what wireguard-go needs (its sockets and TUN lookups act in the
	// namespace of whatever thread runs them).
	if err := nsrun.DoHandle(dp.ns, cmd.Start); err != nil {
		return fmt.Errorf("start datapath process %s: %w", bin, err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reap it if it dies while we live
	if err := os.WriteFile(dp.pidFile(name), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write datapath PID file: %w", err)
	}
	dp.changed("started wireguard-go datapath process", "name", name, "pid", pid)

	deadline := time.NewTimer(datapathStartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := dp.nl.LinkByName(name); err == nil {
			if _, err := dp.wg.Device(name); err == nil {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("datapath process %d exited (%v): %s", pid, err, tail(dp.logFile(name)))
		case <-deadline.C:
			return fmt.Errorf("datapath process %d did not serve %s within %s: %s", pid, name, datapathStartTimeout, tail(dp.logFile(name)))
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// datapathPID returns the PID of the live datapath process of the first
// WireGuard device, or 0.
func (dp *Dataplane) datapathPID() int { return dp.datapathPIDOf(dp.cfg.WireGuardName) }

// datapathPIDOf returns the PID of our live datapath process of device
// name from its PID file, or 0. A PID reused by another program is not
// ours: its command line must name our device.
func (dp *Dataplane) datapathPIDOf(name string) int {
	b, err := os.ReadFile(dp.pidFile(name))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0
	}
	args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
	if !slices.Contains(args, "datapath") {
		return 0
	}
	if i := slices.Index(args, "--name"); i < 0 || i+1 >= len(args) || args[i+1] != name {
		return 0
	}
	return pid
}

// stopDatapath ends our datapath process of device name, if any, and
// removes its PID file.
func (dp *Dataplane) stopDatapath(name string) error {
	pid := dp.datapathPIDOf(name)
	defer os.Remove(dp.pidFile(name))
	if pid == 0 {
		return nil
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stop datapath process %d: %w", pid, err)
	}
	for range 150 {
		if processGone(pid) {
			dp.changed("stopped wireguard-go datapath process", "pid", pid)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	unix.Kill(pid, unix.SIGKILL)
	dp.changed("killed wireguard-go datapath process", "pid", pid)
	return nil
}

// processGone reports whether pid has exited: no such process, or a zombie
// waiting for its parent to reap it.
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses and
	// may itself contain spaces or parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

func (dp *Dataplane) waitLinkGone(name string, d time.Duration) error {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if _, err := dp.nl.LinkByName(name); err != nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s still exists after %s", name, d)
}

// removeWireGuard deletes the WireGuard device name and stops its
// process.
func (dp *Dataplane) removeWireGuard(ctx context.Context, name string) error {
	if err := dp.stopDatapath(name); err != nil {
		return err
	}
	l, err := dp.nl.LinkByName(name)
	if err != nil {
		return nil
	}
	if l.Type() != "wireguard" {
		if dp.waitLinkGone(name, 3*time.Second) == nil {
			return nil
		}
	}
	if err := dp.nl.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return ctx.Err()
}

// configureWireGuard sets the key, port and peers of device name, as a
// diff: peers are added, updated (their allowed IPs replaced for that peer
// only) or removed one by one, never replaced as a whole, so that a change
// to one peer leaves the others' sessions alone. A new private key (the
// first device taking the committed key of a rotation) replaces every
// peer, so that none keeps a handshake time of the old key: the route
// choice of a rotation waits for a handshake under the new one.
// restarted: the device was just made again, its peers still hold
// sessions with the old one, so this host initiates at once with each.
func (dp *Dataplane) configureWireGuard(name string, key wgtypes.Key, port int, peers []peerWant, restarted bool) error {
	dev, err := dp.wg.Device(name)
	if err != nil {
		return fmt.Errorf("read WireGuard device %s: %w", name, err)
	}
	var cfg wgtypes.Config
	var what []string
	if dev.PrivateKey != key {
		cfg.PrivateKey = &key
		what = append(what, "private key")
		if len(dev.Peers) > 0 {
			cfg.ReplacePeers = true
			dev.Peers = nil
		}
	}
	if dev.ListenPort != port {
		cfg.ListenPort = &port
		what = append(what, "listen port "+strconv.Itoa(port))
	}
	cur := map[wgtypes.Key]wgtypes.Peer{}
	for _, p := range dev.Peers {
		cur[p.PublicKey] = p
	}
	for _, w := range peers {
		ep := net.UDPAddrFromAddrPort(w.endpoint)
		var allowed []net.IPNet
		for _, p := range w.allowedIPs {
			allowed = append(allowed, net.IPNet{IP: ipOf(p.Addr()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
		}
		have, ok := cur[w.key]
		delete(cur, w.key)
		if !ok {
			ka := firstKeepalive(key, w.key)
			if restarted {
				ka = PeerKeepalive
			}
			cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: w.key, Endpoint: ep, ReplaceAllowedIPs: true, AllowedIPs: allowed, PersistentKeepaliveInterval: &ka})
			what = append(what, "add peer "+w.server)
			dp.watchStall(name, w.key)
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: w.key, UpdateOnly: true}
		changed := false
		if have.Endpoint == nil || unmapAP(have.Endpoint.AddrPort()) != w.endpoint {
			pc.Endpoint, changed = ep, true
		}
		if !slices.Equal(prefixesOf(have.AllowedIPs), w.allowedIPs) {
			pc.ReplaceAllowedIPs, pc.AllowedIPs, changed = true, allowed, true
		}
		// The other host gets its keepalive with its first handshake.
		if have.PersistentKeepaliveInterval != PeerKeepalive && (initiates(key, w.key) || !have.LastHandshakeTime.IsZero()) {
			ka := PeerKeepalive
			pc.PersistentKeepaliveInterval, changed = &ka, true
		}
		if changed {
			cfg.Peers = append(cfg.Peers, pc)
			what = append(what, "update peer "+w.server)
		}
	}
	for k := range cur {
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		what = append(what, "remove peer "+k.String())
	}
	if len(what) == 0 {
		return nil
	}
	if err := dp.wg.ConfigureDevice(name, cfg); err != nil {
		return fmt.Errorf("configure WireGuard device %s: %w", name, err)
	}
	dp.changed("configured WireGuard device", "name", name, "changes", strings.Join(what, ", "))
	return nil
}

func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func prefixesOf(nets []net.IPNet) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(nets))
	for _, n := range nets {
		a, _ := netip.AddrFromSlice(n.IP)
		ones, _ := n.Mask.Size()
		out = append(out, netip.PrefixFrom(a.Unmap(), ones).Masked())
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

// tail returns the last lines of a log file, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}
