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
	"github.com/corridor-dev/corridor/internal/spec"
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

	// marks are the (source, destination) pairs and their path, sorted.
	marks []pairMark

	firewall []compile.FirewallRule
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
}

type pairMark struct {
	src, dst netip.Addr
	mark     uint32
}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidState, field, fmt.Sprintf(format, args...))
}

// overlayAddr checks that a is a valid IPv4 overlay address: the data plane
// routes guests by IPv4 /32 only.
func overlayAddr(field string, a netip.Addr) error {
	if !a.IsValid() {
		return invalid(field, "missing address")
	}
	if !a.Unmap().Is4() {
		return invalid(field, "%s is not IPv4: guests have IPv4 overlay addresses only", a)
	}
	return nil
}

// buildDesired validates st and indexes it. Every error names the field.
func buildDesired(st compile.HostState) (*desired, error) {
	d := &desired{
		underlay:   st.Address.Unmap(),
		listenPort: st.WireGuardPort,
		fdb:        map[string]netip.Addr{},
		neigh:      map[netip.Addr]net.HardwareAddr{},
	}
	if !d.underlay.IsValid() {
		return nil, invalid("address", "missing underlay address")
	}
	if d.listenPort == 0 {
		d.listenPort = compile.DefaultWireGuardPort
	}
	if d.listenPort < 1 || d.listenPort > 65535 {
		return nil, invalid("wireguardPort", "%d is not a UDP port", st.WireGuardPort)
	}
	mac, err := net.ParseMAC(st.VTEPMAC)
	if err != nil || len(mac) != 6 {
		return nil, invalid("vtepMAC", "%q is not an Ethernet MAC address", st.VTEPMAC)
	}
	if mac[0]&1 == 1 {
		return nil, invalid("vtepMAC", "%s is a multicast address", st.VTEPMAC)
	}
	d.vtepMAC = mac

	local := map[netip.Addr]bool{}
	ifs := map[string]bool{}
	for i, g := range st.Guests {
		f := fmt.Sprintf("guests[%d]", i)
		if err := overlayAddr(f+".address", g.Address); err != nil {
			return nil, err
		}
		if !strings.HasPrefix(g.HostIf, GuestIfPrefix) || len(g.HostIf) > 15 {
			return nil, invalid(f+".hostIf", "%q must start with %q and have at most 15 characters", g.HostIf, GuestIfPrefix)
		}
		if ifs[g.HostIf] {
			return nil, invalid(f+".hostIf", "%q is used by two guests", g.HostIf)
		}
		a := g.Address.Unmap()
		if local[a] {
			return nil, invalid(f+".address", "%s is used by two guests", a)
		}
		ifs[g.HostIf], local[a] = true, true
		d.guests = append(d.guests, guestIf{name: g.HostIf, addr: a, app: g.App, class: g.Class})
	}
	slices.SortFunc(d.guests, func(a, b guestIf) int { return strings.Compare(a.name, b.name) })

	enc := map[netip.Prefix]bool{}
	seenKeys := map[wgtypes.Key]bool{}
	for i, p := range st.Peers {
		f := fmt.Sprintf("peers[%d]", i)
		key, err := wgtypes.ParseKey(p.PublicKey)
		if err != nil {
			return nil, invalid(f+".publicKey", "%v", err)
		}
		if seenKeys[key] {
			return nil, invalid(f+".publicKey", "key of server %q appears twice", p.Server)
		}
		seenKeys[key] = true
		if !p.Endpoint.IsValid() || p.Endpoint.Port() == 0 {
			return nil, invalid(f+".endpoint", "%q is not an address:port", p.Endpoint)
		}
		pw := peerWant{key: key, server: p.Server, endpoint: netip.AddrPortFrom(p.Endpoint.Addr().Unmap(), p.Endpoint.Port())}
		for j, pre := range p.AllowedIPs {
			ff := fmt.Sprintf("%s.allowedIPs[%d]", f, j)
			if !pre.IsValid() {
				return nil, invalid(ff, "missing prefix")
			}
			if err := overlayAddr(ff, pre.Addr()); err != nil {
				return nil, err
			}
			m, err := unmapPrefix(pre)
			if err != nil {
				return nil, invalid(ff, "%v", err)
			}
			if enc[m] {
				return nil, invalid(ff, "%s is allowed for two peers", m)
			}
			enc[m] = true
			pw.allowedIPs = append(pw.allowedIPs, m)
		}
		slices.SortFunc(pw.allowedIPs, comparePrefix)
		d.peers = append(d.peers, pw)
	}
	slices.SortFunc(d.peers, func(a, b peerWant) int { return strings.Compare(a.key.String(), b.key.String()) })
	for p := range enc {
		d.encRoutes = append(d.encRoutes, p)
	}
	slices.SortFunc(d.encRoutes, comparePrefix)

	for i, v := range st.VXLAN {
		f := fmt.Sprintf("vxlan[%d]", i)
		m, err := net.ParseMAC(v.MAC)
		if err != nil || len(m) != 6 || m[0]&1 == 1 {
			return nil, invalid(f+".mac", "%q is not a unicast Ethernet MAC address", v.MAC)
		}
		u := v.Underlay.Unmap()
		if !u.IsValid() {
			return nil, invalid(f+".underlay", "missing underlay address")
		}
		if u.Is4() != d.underlay.Is4() {
			return nil, invalid(f+".underlay", "%s is not of the same family as this host's underlay %s", u, d.underlay)
		}
		if prev, ok := d.fdb[m.String()]; ok && prev != u {
			return nil, invalid(f+".mac", "%s is already the MAC of the host at %s", m, prev)
		}
		d.fdb[m.String()] = u
		for j, g := range v.Guests {
			ff := fmt.Sprintf("%s.guests[%d]", f, j)
			if err := overlayAddr(ff, g); err != nil {
				return nil, err
			}
			g = g.Unmap()
			if _, dup := d.neigh[g]; dup {
				return nil, invalid(ff, "%s is listed twice", g)
			}
			d.neigh[g] = m
			d.plainRoutes = append(d.plainRoutes, netip.PrefixFrom(g, 32))
		}
	}
	slices.SortFunc(d.plainRoutes, comparePrefix)

	pairs := map[[2]netip.Addr]uint32{}
	for i, r := range st.Routes {
		f := fmt.Sprintf("routes[%d]", i)
		if err := overlayAddr(f+".dest", r.Dest); err != nil {
			return nil, err
		}
		mark := MarkPlain
		if r.Encrypt {
			mark = MarkEncrypt
		}
		for j, s := range r.Sources {
			ff := fmt.Sprintf("%s.sources[%d]", f, j)
			if err := overlayAddr(ff, s); err != nil {
				return nil, err
			}
			k := [2]netip.Addr{s.Unmap(), r.Dest.Unmap()}
			if prev, ok := pairs[k]; ok && prev != mark {
				return nil, invalid(ff, "pair %s -> %s is both encrypted and plain", k[0], k[1])
			}
			pairs[k] = mark
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

	for i, r := range st.Firewall {
		f := fmt.Sprintf("firewall[%d]", i)
		if r.Direction != compile.Egress && r.Direction != compile.Ingress {
			return nil, invalid(f+".direction", "%q is neither %q nor %q", r.Direction, compile.Egress, compile.Ingress)
		}
		switch r.Protocol {
		case "", spec.ProtoTCP, spec.ProtoUDP:
		default:
			return nil, invalid(f+".protocol", "%q is neither %q nor %q", r.Protocol, spec.ProtoTCP, spec.ProtoUDP)
		}
		for j, p := range r.Ports {
			if p < 1 || p > 65535 {
				return nil, invalid(fmt.Sprintf("%s.ports[%d]", f, j), "%d is not a port", p)
			}
		}
		for _, list := range []struct {
			name  string
			addrs []netip.Addr
		}{{"sources", r.Sources}, {"dests", r.Dests}, {"remoteSources", r.RemoteSources}} {
			for j, a := range list.addrs {
				if err := overlayAddr(fmt.Sprintf("%s.%s[%d]", f, list.name, j), a); err != nil {
					return nil, err
				}
			}
		}
		if err := checkName(f+".app", r.App); err != nil {
			return nil, err
		}
		if err := checkName(f+".fromClass", r.FromClass); err != nil {
			return nil, err
		}
		if err := checkName(f+".toClass", r.ToClass); err != nil {
			return nil, err
		}
		d.firewall = append(d.firewall, r)
	}
	for i, g := range d.guests {
		if err := checkName(fmt.Sprintf("guests[%d].app", i), g.app); err != nil {
			return nil, err
		}
		if err := checkName(fmt.Sprintf("guests[%d].class", i), g.class); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// checkName rejects names that cannot be part of a counter name: the
// counters are named "kind:app:class" and parsed back by Status.
func checkName(field, s string) error {
	if s == "" {
		return invalid(field, "missing name")
	}
	if strings.ContainsAny(s, ":\x00") || len(s) > 63 {
		return invalid(field, "%q must have at most 63 characters and no ':'", s)
	}
	return nil
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix into its IPv4 form, masked.
func unmapPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.Addr().Is4In6() {
		return p.Masked(), nil
	}
	if p.Bits() < 96 {
		return netip.Prefix{}, fmt.Errorf("%s is not an IPv4 prefix", p)
	}
	return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked(), nil
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
