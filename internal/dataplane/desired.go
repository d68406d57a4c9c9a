package dataplane

import (
	"errors"
	"fmt"
	"iter"
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

	// marks give the path of (source, destination) pairs, in groups.
	marks []markGroup

	firewall []compile.FirewallRule

	// outbound: local guests to outside destinations (egress.go).
	outbound []compile.Outbound

	// ingress: the published ports of this entry host (ingress.go).
	ingress []hoststate.IngressEntry

	// hold: addresses of tasks about to move, sorted (State.Hold).
	hold []netip.Addr
	// offload: established plain flows go to flowtable corflows (set by
	// the Dataplane from what its kernel offers, not by the state).
	offload bool
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

// markGroup is the path (mark) of the pairs from any of srcs to any of
// dsts, both sorted.
type markGroup struct {
	srcs, dsts []netip.Addr
	mark       uint32
}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidState, field, fmt.Sprintf(format, args...))
}

// buildDesired validates st and indexes it. Every error names the field.
// The checks are the host-state contract's (hoststate.CheckNetwork), and
// the data plane's own rule for guest interface names.
func buildDesired(st compile.HostState) (*desired, error) {
	// A derived state (schema 1.6) has its peers' allowed IPs and VXLAN
	// entries' guests in its route groups: filled in once, here, and
	// refused when they cannot be derived; CheckNetwork then checks the
	// filled state as any other.
	st, err := st.CheckedFilled()
	if err == nil {
		err = hoststate.CheckNetwork(st)
	}
	if err != nil {
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

	d.marks = groupMarks(st.EachRoute()) // a state's routes, its route groups expanded
	return d, nil
}

// groupMarks gathers the routes' (source, destination) pairs into groups
// of one mark and one set of sources: the routes of a class pair share
// their sources (the local guests of the class), so a host has about one
// group per class pair and path, each with a set of sources and a set of
// destinations. Listed pair by pair they were local x remote tasks: an app
// of 1,000 tasks on three servers gave each host a map of 111,000 pairs.
// Groups come in the order of their first route; a pair is in one group
// only, since a route names one destination and the compiler gives a
// (source, destination) pair one path.
func groupMarks(routes iter.Seq[compile.Route]) []markGroup {
	var groups []markGroup
	index := map[string]int{}
	var key strings.Builder
	for r := range routes {
		mark := MarkPlain
		if r.Encrypt {
			mark = MarkEncrypt
		}
		srcs := make([]netip.Addr, 0, len(r.Sources))
		for _, a := range r.Sources {
			srcs = append(srcs, a.Unmap())
		}
		slices.SortFunc(srcs, netip.Addr.Compare)
		srcs = slices.Compact(srcs)
		if len(srcs) == 0 {
			continue
		}
		key.Reset()
		fmt.Fprintf(&key, "%d", mark)
		for _, a := range srcs {
			key.WriteByte(' ')
			key.WriteString(a.String())
		}
		i, ok := index[key.String()]
		if !ok {
			i = len(groups)
			index[key.String()] = i
			groups = append(groups, markGroup{srcs: srcs, mark: mark})
		}
		groups[i].dsts = append(groups[i].dsts, r.Dest.Unmap())
	}
	for i := range groups {
		slices.SortFunc(groups[i].dsts, netip.Addr.Compare)
		groups[i].dsts = slices.Compact(groups[i].dsts)
	}
	return groups
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
