package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/nsrun"
)

// Config says where and how the data plane acts.
type Config struct {
	// NetNS is the path of the host's network namespace (such as
	// /run/netns/x or /proc/<pid>/ns/net). Empty: the namespace of the
	// calling thread when New runs.
	NetNS string
	// Underlay is the name of the underlay interface. Empty: the interface
	// that holds HostState.Address.
	Underlay string
	// StateDir holds the WireGuard private key and the datapath process's
	// PID file and log. Required.
	StateDir string
	// MTU of the underlay. Zero: read from the underlay interface.
	MTU int
	// WireGuardName is the name of the WireGuard device (default corw0).
	// It must be unique on the machine when several hosts share it and the
	// device is served by wireguard-go; see the package documentation.
	WireGuardName string
	// Binary is the corridor binary that runs the wireguard-go datapath
	// process. Empty: this process's executable.
	Binary string
	// Userspace forces wireguard-go even where the kernel has WireGuard.
	Userspace bool
	// Procs is the wireguard-go process's GOMAXPROCS (its --procs);
	// 0: its default, half the CPUs (wguser.DefaultProcs).
	Procs int
	// NoFlowOffload keeps every plain flow on the forwarding path even
	// where the kernel has nftables flowtables (flowtable.go).
	NoFlowOffload bool
	// Logger receives what the data plane changes. Nil: slog.Default().
	Logger *slog.Logger
}

// Dataplane owns the kernel networking state of one host.
type Dataplane struct {
	cfg Config
	log *slog.Logger
	ns  netns.NsHandle
	nl  *netlink.Handle
	nft *nftables.Conn
	wg  *wgctrl.Client

	// key and keyGen change only in RotateKey, under mu and keyMu; code
	// holding mu reads them directly, PublicKey and Key take keyMu.
	keyMu  sync.RWMutex
	key    wgtypes.Key
	keyGen int64
	// next is the next key of a hitless rotation under way (PrepareKey),
	// nil when there is none; it becomes key when the control plane
	// commits it (see rotation.go).
	next    *wgtypes.Key
	nextGen int64

	mu sync.Mutex
	// changes made by the last Apply, for logs and tests.
	changes []string
	// servers maps peer public keys to server names, from the last state.
	servers map[wgtypes.Key]string
	// last is the last state Apply applied in full, which Watch repairs
	// to; nil before the first.
	last *compile.HostState
	// restarted is set while an Apply recreates a WireGuard device that
	// this process had configured before (its datapath process died, or
	// the device was deleted): its peers still hold sessions with the old
	// device, so this host initiates at once with every peer.
	restarted bool
	// spareRestarted is restarted for the second WireGuard device;
	// spareUp: this process has configured the second device and not
	// removed it since.
	spareRestarted, spareUp bool
	// stalls are the new peers still waiting for their first handshake
	// (see RetryStalledHandshakes); empty, nothing is read.
	stalls map[stallKey]*stall
	// lastDesired is the last applied state, indexed; via names, per
	// peer server, the WireGuard device its routes take (rotation.go);
	// moved the servers whose device changed since RetryStalledHandshakes
	// last told.
	lastDesired *desired
	via         map[string]string
	moved       []string
	// flowtablesProbed: the first Apply probed for nftables flowtables
	// and logged the answer (flowtable.go); flowtables is that answer.
	flowtablesProbed bool
	flowtables       bool
}

// New opens the host's namespace and its netlink, nftables and wgctrl
// handles, and loads (or makes) the WireGuard key. It changes nothing in
// the kernel.
func New(cfg Config) (*Dataplane, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("dataplane: Config.StateDir is required")
	}
	if cfg.WireGuardName == "" {
		cfg.WireGuardName = DefaultWireGuardName
	}
	if len(cfg.WireGuardName) > 15 || len(cfg.WireGuardName) < 4 || cfg.WireGuardName[:3] != "cor" || strings.Contains(cfg.WireGuardName, "+") {
		return nil, fmt.Errorf("dataplane: Config.WireGuardName %q must start with \"cor\", have 4 to 15 characters and no \"+\" (that of the second device of a key rotation)", cfg.WireGuardName)
	}
	if cfg.MTU < 0 || (cfg.MTU > 0 && cfg.MTU < 1280) {
		return nil, fmt.Errorf("dataplane: Config.MTU %d is too small (at least 1280)", cfg.MTU)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	key, err := LoadOrCreateKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	keyGen, err := LoadKeyGeneration(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	next, nextGen, err := loadNextKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	var ns netns.NsHandle
	if cfg.NetNS == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(cfg.NetNS)
	}
	if err != nil {
		return nil, fmt.Errorf("dataplane: open network namespace %q: %w", cfg.NetNS, err)
	}
	dp := &Dataplane{cfg: cfg, log: cfg.Logger.With("component", "dataplane"), ns: ns, key: key, keyGen: keyGen}
	switch {
	case next != nil && (*next == key || nextGen <= keyGen):
		// A commit that stopped after the key was written: it is done.
		dp.removeNextKeyFiles()
	case next != nil:
		dp.next, dp.nextGen = next, nextGen
	}
	if dp.nl, err = netlink.NewHandleAt(ns); err != nil {
		ns.Close()
		return nil, fmt.Errorf("dataplane: netlink handle: %w", err)
	}
	if dp.nft, err = nftables.New(nftables.WithNetNSFd(int(ns)), nftables.AsLasting(), nftables.WithSockOptions(bigBuffers)); err != nil {
		dp.Close()
		return nil, fmt.Errorf("dataplane: nftables handle: %w", err)
	}
	// wgctrl's kernel client is a generic netlink socket, bound to the
	// namespace of the thread that opens it.
	err = nsrun.DoHandle(ns, func() error {
		var err error
		dp.wg, err = wgctrl.New()
		return err
	})
	if err != nil {
		dp.Close()
		return nil, fmt.Errorf("dataplane: wgctrl client: %w", err)
	}
	return dp, nil
}

// PublicKey is the host's WireGuard public key, the only part of the key
// that leaves the host.
func (dp *Dataplane) PublicKey() wgtypes.Key {
	dp.keyMu.RLock()
	defer dp.keyMu.RUnlock()
	return dp.key.PublicKey()
}

// Key is the host's public key and the generation it was made for (0 for
// the first key, then that of the last RotateKey), read together.
func (dp *Dataplane) Key() (wgtypes.Key, int64) {
	dp.keyMu.RLock()
	defer dp.keyMu.RUnlock()
	return dp.key.PublicKey(), dp.keyGen
}

// WireGuardName is the name of the WireGuard device.
func (dp *Dataplane) WireGuardName() string { return dp.cfg.WireGuardName }

// Close releases the handles. It leaves the kernel state and the
// wireguard-go process alone: traffic goes on while the agent is away.
func (dp *Dataplane) Close() error {
	if dp.wg != nil {
		dp.wg.Close()
	}
	if dp.nft != nil {
		dp.nft.CloseLasting()
	}
	if dp.nl != nil {
		dp.nl.Close()
	}
	return dp.ns.Close()
}

// LastChanges lists the kernel changes made by the last Apply; empty when
// it found everything as wanted.
func (dp *Dataplane) LastChanges() []string {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return slices.Clone(dp.changes)
}

func (dp *Dataplane) changed(what string, args ...any) {
	dp.changes = append(dp.changes, what)
	dp.log.Info(what, args...)
}

// Apply makes the host's kernel state match st, changing only what
// differs. The firewall comes first so that nothing is forwarded under an
// older policy than st's for longer than needed, and ip_forward last.
func (dp *Dataplane) Apply(ctx context.Context, st compile.HostState) error {
	d, err := buildDesired(st)
	if err != nil {
		return err
	}
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return dp.applyLocked(ctx, st, d)
}

// applyLocked is Apply with dp.mu held and st already built into d. Watch's
// repair takes the last applied state and applies it under one hold of the
// lock: read first and applied after, an Apply of a newer state in between
// would be undone by the older one.
func (dp *Dataplane) applyLocked(ctx context.Context, st compile.HostState, d *desired) error {
	dp.changes = nil
	start := time.Now()
	dp.noteFlowtables()

	d.offload = dp.offloading()
	rs := buildRuleset(d, dp.cfg.WireGuardName)
	changed, err := dp.applyFirewall(rs)
	if err != nil {
		return err
	}
	if changed {
		dp.changed("replaced nftables table inet "+NFTTable, "rules", len(rs.rules), "fingerprint", rs.hash)
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	under, err := dp.underlay(d.underlay)
	if err != nil {
		return err
	}
	mtu := dp.cfg.MTU
	if mtu == 0 {
		mtu = under.Attrs().MTU
	}
	vx, err := dp.ensureVXLAN(d, under, mtu)
	if err != nil {
		return err
	}
	if err := dp.ensureGatewayAddr(vx); err != nil {
		return err
	}
	if err := dp.syncFDB(d, vx); err != nil {
		return err
	}
	if err := dp.syncNeighbours(d, vx); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	servers := map[wgtypes.Key]string{}
	for _, p := range d.peers {
		servers[p.key] = p.server
		if p.hasNext {
			servers[p.next] = p.server
		}
	}
	dp.servers = servers
	// The WireGuard devices (the second one during a key rotation) and
	// the routes of table 5181 between them.
	if _, _, err := dp.applyWireGuard(ctx, d, mtu-wireguardOverhead); err != nil {
		return err
	}
	dp.lastDesired = d
	if err := dp.syncRoutes(TablePlain, vx, d.plainRoutes); err != nil {
		return err
	}
	var local []netip.Addr
	for _, g := range d.guests {
		local = append(local, g.addr)
	}
	if err := dp.syncGuestTable(local, true); err != nil {
		return err
	}
	if err := dp.syncRules(d); err != nil {
		return err
	}

	want := []sysctl{
		{Key: "net/ipv4/conf/" + VXLANName + "/src_valid_mark", Value: "1"},
		// No reverse-path lookup per packet where rp_filter is 0 (see
		// doc.go, "Reverse-path check"): the input chain's vtep rule
		// admits only inner sources behind a known VTEP.
		{Key: "net/ipv4/conf/" + VXLANName + "/accept_local", Value: "1"},
	}
	want = append(want, egressSysctls(d, under.Attrs().Name)...)
	links, err := retryDump(func() ([]netlink.Link, error) { return dp.nl.LinkList() })
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	present := map[string]bool{}
	for _, l := range links {
		present[l.Attrs().Name] = true
	}
	for _, g := range d.guests {
		// The guest's default route is 169.254.1.1 onlink: the host side
		// of its veth answers its ARP requests by proxy.
		if present[g.name] {
			want = append(want, sysctl{Key: "net/ipv4/conf/" + g.name + "/proxy_arp", Value: "1"})
			// After the ruleset, whose prerouting checks the guest's
			// source first (guestSource): see doc.go, "Reverse-path check".
			want = append(want, sysctl{Key: "net/ipv4/conf/" + g.name + "/accept_local", Value: "1"})
		}
	}
	dp.syncFlowtable(d, present)
	want = append(want, sysctl{Key: "net/ipv4/ip_forward", Value: "1"})
	keys, err := setSysctls(dp.ns, want)
	if err != nil {
		return err
	}
	for _, k := range keys {
		dp.changed("set sysctl", "key", k)
	}
	dp.rememberApplied(st)
	dp.log.Debug("applied host state", "host", st.Host, "changes", len(dp.changes), "took", time.Since(start))
	return nil
}

// underlay finds the underlay interface: by name, or as the interface that
// holds addr.
func (dp *Dataplane) underlay(addr netip.Addr) (netlink.Link, error) {
	if dp.cfg.Underlay != "" {
		l, err := dp.nl.LinkByName(dp.cfg.Underlay)
		if err != nil {
			return nil, fmt.Errorf("underlay interface %q: %w", dp.cfg.Underlay, err)
		}
		return l, nil
	}
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return dp.nl.AddrList(nil, family) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			l, err := dp.nl.LinkByIndex(a.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("underlay interface of %s: %w", addr, err)
			}
			return l, nil
		}
	}
	return nil, fmt.Errorf("no interface holds the underlay address %s: set Config.Underlay or fix the host state's address", addr)
}

// PeerStatus is the live state of one WireGuard peer.
type PeerStatus struct {
	PublicKey     string    `json:"publicKey"`
	Server        string    `json:"server,omitempty"` // from the last applied state
	Endpoint      string    `json:"endpoint,omitempty"`
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	RxBytes       int64     `json:"rxBytes"`
	TxBytes       int64     `json:"txBytes"`
	AllowedIPs    []string  `json:"allowedIPs,omitempty"`
	// Device is the WireGuard device that holds this peer; Spare is set
	// for the second device of a key rotation. Routed: the routes to the
	// peer's guests take this device.
	Device string `json:"device,omitempty"`
	Spare  bool   `json:"spare,omitempty"`
	Routed bool   `json:"routed,omitempty"`
}

// Status is the live state of the data plane.
type Status struct {
	WireGuard string `json:"wireguard"` // device name
	PublicKey string `json:"publicKey"`
	// NextPublicKey and NextKeyGeneration: the next key of a rotation
	// under way on this host (PrepareKey), not yet committed.
	NextPublicKey     string `json:"nextPublicKey,omitempty"`
	NextKeyGeneration int64  `json:"nextKeyGeneration,omitempty"`
	Mode              string `json:"mode"` // "kernel", "userspace" or "absent"
	Port              int    `json:"port,omitempty"`
	// FlowOffload says whether established plain flows skip the
	// forwarding path through flowtable corflows: "on", "off" (turned off
	// by Config.NoFlowOffload) or "unavailable" (the kernel has no
	// flowtables); OffloadedFlows counts the connections it holds now.
	FlowOffload    string `json:"flowOffload,omitempty"`
	OffloadedFlows int    `json:"offloadedFlows,omitempty"`
	// OffloadedEncrypted counts offloaded connections of encrypted paths:
	// never more than zero unless the offload rules are wrong, for such a
	// connection skips the check that keeps it on WireGuard (the agent
	// reports it as an error).
	OffloadedEncrypted int           `json:"offloadedEncrypted,omitempty"`
	Peers              []PeerStatus  `json:"peers"`
	Drops              []DropCounter `json:"drops"`
}

// Status reads the WireGuard peers (of both devices during a key
// rotation) and the firewall's drop counters.
func (dp *Dataplane) Status(ctx context.Context) (Status, error) {
	// Held throughout: the nftables connection is one lasting netlink
	// socket, and a counter dump interleaved with an Apply's (or a
	// repair's) batch mixes their replies ("unexpected header type").
	dp.mu.Lock()
	offload := dp.offloading()
	dp.mu.Unlock()
	// The offloaded connections, read on a socket of their own (without
	// the lock) and only those of plain paths (the kernel filters).
	offloaded, breach := 0, 0
	if offload {
		var err error
		offloaded, err = countConntrack(dp.ns, ipsOffload, MarkPlain, MarkMask)
		if err == nil {
			breach, err = countConntrack(dp.ns, ipsOffload, MarkEncrypt, MarkMask)
		}
		if err != nil {
			// Only the counts are missing: the rest is still worth telling.
			dp.log.Warn("could not count the offloaded flows", "err", err)
		}
	}
	dp.mu.Lock()
	defer dp.mu.Unlock()
	servers, via := dp.servers, dp.via
	s := Status{WireGuard: dp.cfg.WireGuardName, PublicKey: dp.PublicKey().String(), Mode: "absent",
		FlowOffload: dp.offloadMode(), OffloadedFlows: offloaded, OffloadedEncrypted: breach}
	if k, gen, ok := dp.NextKey(); ok {
		s.NextPublicKey, s.NextKeyGeneration = k.String(), gen
	}
	spareName := SpareName(dp.cfg.WireGuardName)
	for _, name := range []string{dp.cfg.WireGuardName, spareName} {
		l, err := dp.nl.LinkByName(name)
		if err != nil {
			continue
		}
		dev, err := dp.wg.Device(name)
		if err != nil {
			return s, fmt.Errorf("read WireGuard device %s: %w", name, err)
		}
		if name == dp.cfg.WireGuardName {
			s.Mode = "userspace"
			if l.Type() == "wireguard" {
				s.Mode = "kernel"
			}
			s.Port = dev.ListenPort
		}
		for _, p := range dev.Peers {
			ps := PeerStatus{
				PublicKey:     p.PublicKey.String(),
				Server:        servers[p.PublicKey],
				LastHandshake: p.LastHandshakeTime,
				RxBytes:       p.ReceiveBytes,
				TxBytes:       p.TransmitBytes,
				Device:        name,
				Spare:         name == spareName,
			}
			ps.Routed = ps.Server != "" && via[ps.Server] == name
			if p.Endpoint != nil {
				ps.Endpoint = p.Endpoint.String()
			}
			for _, a := range p.AllowedIPs {
				ps.AllowedIPs = append(ps.AllowedIPs, a.String())
			}
			s.Peers = append(s.Peers, ps)
		}
	}
	slices.SortFunc(s.Peers, func(a, b PeerStatus) int {
		if c := strings.Compare(a.PublicKey, b.PublicKey); c != 0 {
			return c
		}
		return strings.Compare(a.Device, b.Device)
	})
	drops, err := dp.dropCounters()
	if err != nil {
		return s, err
	}
	s.Drops = drops
	return s, ctx.Err()
}

// Remove deletes everything Apply made: table inet corridor, our ip rules
// and routing tables, corv0 and the WireGuard device (stopping its
// wireguard-go process). It leaves sysctls alone: ip_forward may be needed
// by others, and the guest runtime owns the guest interfaces. The key file
// stays too.
func (dp *Dataplane) Remove(ctx context.Context) error {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	var errs []error
	if err := dp.removeFirewall(); err != nil {
		errs = append(errs, err)
	}
	if err := dp.removeRules(); err != nil {
		errs = append(errs, err)
	}
	for _, t := range []int{TableEncrypt, TablePlain, TableIngress} {
		if err := dp.syncRoutes(t, nil, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if err := dp.syncGuestTable(nil, false); err != nil {
		errs = append(errs, err)
	}
	if l, err := dp.nl.LinkByName(VXLANName); err == nil {
		if err := dp.nl.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", VXLANName, err))
		}
	}
	for _, n := range dp.wgNames() {
		if err := dp.removeWireGuard(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// nftBufferSize is the socket buffer size of the nftables connection: the
// whole ruleset goes out in one sendmsg, which the default buffer (about
// 200 KiB) cannot hold for a thousand peers.
const nftBufferSize = 32 << 20

// bigBuffers enlarges the nftables socket's buffers, past the system
// maximum when we have CAP_NET_ADMIN (SO_SNDBUFFORCE), else up to it.
func bigBuffers(c *mdnetlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], nftBufferSize) != nil {
				if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], nftBufferSize); e != nil {
					serr = e
				}
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// retryDump retries a netlink dump that the kernel interrupted because the
// table changed meanwhile, or that failed for a transient reason (EBUSY,
// EINTR, ENOBUFS, EAGAIN: see transientNetlink), a few times with a short
// pause, before its error is reported.
func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	var err error
	for attempt := range dumpAttempts {
		if attempt > 0 && !errors.Is(err, netlink.ErrDumpInterrupted) {
			time.Sleep(time.Duration(attempt) * dumpRetryPause)
		}
		var out []T
		out, err = f()
		if err == nil || !transientNetlink(err) {
			return out, err
		}
	}
	return nil, fmt.Errorf("%w (failed %d times in a row)", err, dumpAttempts)
}

func ipOf(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }
