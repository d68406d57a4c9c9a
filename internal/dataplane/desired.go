package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// ErrInvalidState is wrapped by every error about a HostState that cannot be
// applied.
var ErrInvalidState = errors.New("dataplane: invalid host state")

// desired is a HostState checked and indexed for the reconcilers. It is
// computed without touching the kernel.
type desired struct {
	underlay   netip.Addr
	vtepMAC    net.HardwareAddr
	listenPort int

	// rotationPhase and publicKey: this host's own key rotation, as the
	// control plane sees it (hoststate.State.RotationPhase, PublicKey).
	rotationPhase string
	publicKey     wgtypes.Key
	hasPublicKey  bool

	guests []guestIf
	peers  []peerWant

	// fdb maps a remote corv0 MAC (lower case) to its host's underlay.
	fdb map[string]netip.Addr
	// neigh maps a remote guest reached in plain to its host's corv0 MAC.
	neigh map[netip.Addr]net.HardwareAddr

	// encRoutes and plainRoutes are the destinations of tables
	// TableEncrypt and TablePlain, sorted.
	encRoutes   []netip.Prefix
	plainRoutes []netip.Prefix

	// vtepGuests are the pairs (remote underlay address, remote guest)
	// of the VXLAN entries, sorted: who may send which inner source.
	vtepGuests [][2]netip.Addr

	// marks are the (source, destination) pairs and their path, sorted.
	marks []pairMark

	firewall []compile.FirewallRule

	// outbound: local guests to outside destinations (egress.go).
	outbound []compile.Outbound

	// ingress: the published ports of this entry host (ingress.go).
	ingress []hoststate.IngressEntry

	// hold: addresses of tasks about to move, sorted (State.Hold).
	hold []netip.Addr
}

type guestIf struct {
	name  string
	addr  netip.Addr
	app   string
	class string
}

type peerWant struct {
	key        wgtypes.Key
	server     string
	endpoint   netip.AddrPort
	allowedIPs []netip.Prefix // sorted, masked
	// next is the peer's next key while it rotates (hasNext).
	next    wgtypes.Key
	hasNext bool
}

type pairMark struct {
	src, dst netip.Addr
	mark     uint32
}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidState, field, fmt.Sprintf(format, args...))
}

// buildDesired validates st and indexes it. Every error names the field.
// The checks are the host-state contract's (hoststate.CheckNetwork), and
// the data plane's own rule for guest interface names.
func buildDesired(st compile.HostState) (*desired, error) {
	if err := hoststate.CheckNetwork(st); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidState, err)
	}
	for i, g := range st.Guests {
		if !strings.HasPrefix(g.HostIf, GuestIfPrefix) {
			return nil, invalid(fmt.Sprintf("guests[%d].hostIf", i), "%q must start with %q and have at most 15 characters", g.HostIf, GuestIfPrefix)
		}
	}
	// Checked: what follows only indexes.
	d := &desired{
		underlay:   st.Address.Unmap(),
		listenPort: st.WireGuardPort,
		fdb:        map[string]netip.Addr{},
		neigh:      map[netip.Addr]net.HardwareAddr{},
		firewall:   append([]compile.FirewallRule(nil), st.Firewall...),
		outbound:   st.Outbound,
		ingress:    st.Ingress,
	}
	if d.listenPort == 0 {
		d.listenPort = compile.DefaultWireGuardPort
	}
	d.rotationPhase = st.RotationPhase
	if st.PublicKey != "" {
		d.publicKey, _ = wgtypes.ParseKey(st.PublicKey)
		d.hasPublicKey = true
	}
	d.vtepMAC, _ = hoststate.ParseMAC(st.VTEPMAC)
	for _, a := range st.Hold {
		d.hold = append(d.hold, a.Unmap())
	}
	d.hold = sortedUnique(d.hold)

	for _, g := range st.Guests {
		d.guests = append(d.guests, guestIf{name: g.HostIf, addr: g.Address.Unmap(), app: g.App, class: g.Class})
	}
	slices.SortFunc(d.guests, func(a, b guestIf) int { return strings.Compare(a.name, b.name) })

	for _, p := range st.Peers {
		key, _ := wgtypes.ParseKey(p.PublicKey)
		pw := peerWant{key: key, server: p.Server, endpoint: netip.AddrPortFrom(p.Endpoint.Addr().Unmap(), p.Endpoint.Port())}
		if p.NextPublicKey != "" {
			pw.next, _ = wgtypes.ParseKey(p.NextPublicKey)
			pw.hasNext = true
		}
		for _, pre := range p.AllowedIPs {
			m, _ := hoststate.UnmapPrefix(pre)
			pw.allowedIPs = append(pw.allowedIPs, m)
			d.encRoutes = append(d.encRoutes, m)
		}
		slices.SortFunc(pw.allowedIPs, comparePrefix)
		d.peers = append(d.peers, pw)
	}
	slices.SortFunc(d.peers, func(a, b peerWant) int { return strings.Compare(a.key.String(), b.key.String()) })
	slices.SortFunc(d.encRoutes, comparePrefix)

	for _, v := range st.VXLAN {
		m, _ := hoststate.ParseMAC(v.MAC)
		d.fdb[m.String()] = v.Underlay.Unmap()
		for _, g := range v.Guests {
			d.neigh[g.Unmap()] = m
			d.plainRoutes = append(d.plainRoutes, netip.PrefixFrom(g.Unmap(), 32))
			d.vtepGuests = append(d.vtepGuests, [2]netip.Addr{v.Underlay.Unmap(), g.Unmap()})
		}
	}
	slices.SortFunc(d.plainRoutes, comparePrefix)
	slices.SortFunc(d.vtepGuests, func(a, b [2]netip.Addr) int {
		if c := a[0].Compare(b[0]); c != 0 {
			return c
		}
		return a[1].Compare(b[1])
	})
	d.vtepGuests = slices.Compact(d.vtepGuests)

	pairs := map[[2]netip.Addr]uint32{}
	for _, r := range st.Routes {
		mark := MarkPlain
		if r.Encrypt {
			mark = MarkEncrypt
		}
		for _, s := range r.Sources {
			pairs[[2]netip.Addr{s.Unmap(), r.Dest.Unmap()}] = mark
		}
	}
	for k, m := range pairs {
		d.marks = append(d.marks, pairMark{src: k[0], dst: k[1], mark: m})
	}
	slices.SortFunc(d.marks, func(a, b pairMark) int {
		if c := a.src.Compare(b.src); c != 0 {
			return c
		}
		return a.dst.Compare(b.dst)
	})
	return d, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// Validate reports whether Apply would accept st, without touching the
// kernel: the agent checks a new desired state before it keeps it.
func Validate(st compile.HostState) error {
	_, err := buildDesired(st)
	return err
}
