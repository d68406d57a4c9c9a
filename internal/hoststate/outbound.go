package hoststate

import (
	"fmt"
	"net/netip"

	"github.com/corridor-dev/corridor/internal/spec"
)

// Outbound lets local guests open connections to destinations outside
// Corridor (an app's spec.Egress, and its resolvers on port 53): Sources
// (this host's guests of App/Class) to Dests (IPv4 prefixes, never an
// overlay network or a server's address) on Protocol and Ports. The data
// plane marks such packets (MarkEgress), routes them by the host's main
// table (its underlay) and rewrites their source to the host's underlay
// address. Plain by definition: the destination is outside Corridor.
// Not to be confused with Egress, the direction of a FirewallRule between
// guests.
type Outbound struct {
	App      string         `json:"app"`
	Class    string         `json:"class"`
	Sources  []netip.Addr   `json:"sources"`
	Dests    []netip.Prefix `json:"dests"`
	Protocol string         `json:"protocol"`
	Ports    []int          `json:"ports"`
}

// checkOutbound checks State.Outbound and the guests' resolvers: sources
// are this state's guests of the app and class, destinations IPv4, masked
// and clear of every guest network, the guarded ranges and the host's own
// address.
func checkOutbound(st State) error {
	type owner struct{ app, class string }
	local := map[netip.Addr]owner{}
	var nets []netip.Prefix
	for _, g := range st.Guests {
		local[g.Address.Unmap()] = owner{g.App, g.Class}
		if g.Network.IsValid() {
			nets = append(nets, g.Network)
		}
	}
	outside := func(field string, p netip.Prefix) error {
		if !p.IsValid() || !p.Addr().Is4() || p != p.Masked() {
			return invalid(field, "%s is not a masked IPv4 prefix", p)
		}
		if p.Contains(st.Address.Unmap()) {
			return invalid(field, "%s holds the host's own underlay address", p)
		}
		for _, n := range append(nets, overlayGuard...) {
			if n.Overlaps(p) {
				return invalid(field, "%s overlaps %s: an outside destination is never an overlay or reserved address", p, n)
			}
		}
		for a := range local {
			if p.Contains(a) {
				return invalid(field, "%s holds the guest address %s", p, a)
			}
		}
		return nil
	}
	for i, o := range st.Outbound {
		f := fmt.Sprintf("outbound[%d]", i)
		if err := checkName(f+".app", o.App); err != nil {
			return err
		}
		if err := checkName(f+".class", o.Class); err != nil {
			return err
		}
		switch o.Protocol {
		case spec.ProtoTCP, spec.ProtoUDP:
		default:
			return invalid(f+".protocol", "%q is neither %q nor %q", o.Protocol, spec.ProtoTCP, spec.ProtoUDP)
		}
		if len(o.Ports) == 0 || len(o.Sources) == 0 || len(o.Dests) == 0 {
			return invalid(f, "needs sources, dests and ports")
		}
		for j, p := range o.Ports {
			if p < 1 || p > 65535 {
				return invalid(fmt.Sprintf("%s.ports[%d]", f, j), "%d is not a port", p)
			}
		}
		for j, s := range o.Sources {
			if w, ok := local[s.Unmap()]; !ok || w.app != o.App || w.class != o.Class {
				return invalid(fmt.Sprintf("%s.sources[%d]", f, j), "%s is not a guest of %s/%s on this host", s, o.App, o.Class)
			}
		}
		for j, d := range o.Dests {
			if err := outside(fmt.Sprintf("%s.dests[%d]", f, j), d); err != nil {
				return err
			}
		}
	}
	for i, g := range st.Guests {
		for j, r := range g.Resolvers {
			if err := outside(fmt.Sprintf("guests[%d].resolvers[%d]", i, j), netip.PrefixFrom(r.Unmap(), 32)); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkOutboundServers refuses an outside destination that holds a
// server's underlay address: guests never reach the hosts themselves.
func checkOutboundServers(st State, servers []netip.Addr) error {
	for i, o := range st.Outbound {
		if err := holdsServer(fmt.Sprintf("outbound[%d].dests", i), o.Dests, servers); err != nil {
			return err
		}
	}
	return nil
}

// holdsServer refuses a prefix of list (the field named) that holds one of
// the servers' underlay addresses.
func holdsServer(field string, list []netip.Prefix, servers []netip.Addr) error {
	for j, p := range list {
		for _, s := range servers {
			if p.Contains(s.Unmap()) {
				return invalid(fmt.Sprintf("%s[%d]", field, j), "%s holds the server address %s", p, s)
			}
		}
	}
	return nil
}
