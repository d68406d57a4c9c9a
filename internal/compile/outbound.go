package compile

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Outbound is the host-state type of a class's outside destinations.
type Outbound = hoststate.Outbound

// fleetRanges are what an outside destination or a published address
// must not meet: the overlay (the pool, or DefaultPool, and every app's
// network) and the servers' underlay addresses. The lists are made when
// first asked for: most fleets have no egress rule or published port, and
// 1,000 servers made 0.1 MB of lists on every compile for nothing.
type fleetRanges struct {
	c       *compiler
	pool    netip.Prefix
	overlay []netip.Prefix
	under   []netip.Addr
}

// conflict is spec.OutsideConflict of p with the fleet's ranges.
func (f *fleetRanges) conflict(p netip.Prefix) string {
	if f.overlay == nil {
		pool := f.pool
		if !pool.IsValid() {
			pool = DefaultPool
		}
		f.overlay = append(make([]netip.Prefix, 0, 1+len(f.c.apps)), pool)
		for _, a := range f.c.apps {
			f.overlay = append(f.overlay, a.network)
		}
		f.under = make([]netip.Addr, 0, len(f.c.servers))
		for _, s := range f.c.servers {
			f.under = append(f.under, s.addr)
		}
	}
	return spec.OutsideConflict(p, f.overlay, f.under)
}

// checkOutside refuses an app's outside destination (egress or resolver)
// that overlaps the overlay (the pool, any app's network) or holds a
// server's underlay address. spec validation has already refused the
// ranges it can see from the app alone, with file and line; this is the
// check against the fleet.
func (c *compiler) checkOutside(pool netip.Prefix) error {
	fr := fleetRanges{c: c, pool: pool}
	for _, a := range c.apps {
		for i, e := range a.spec.Egress {
			for j, d := range e.To {
				field := "apps[" + a.name + "].egress[" + strconv.Itoa(i) + "].to[" + strconv.Itoa(j) + "]"
				p, err := spec.ParseOutside(d)
				if err != nil {
					return inputErr(field, "%v", err)
				}
				if why := fr.conflict(p); why != "" {
					return inputErr(field, "destination %s %s", p, why)
				}
			}
			if cl := a.class(e.From); cl == nil {
				return inputErr("apps["+a.name+"].egress["+strconv.Itoa(i)+"].from", "class %q is not defined in this app", e.From)
			}
		}
		for i, r := range a.spec.Resolvers {
			field := "apps[" + a.name + "].resolvers[" + strconv.Itoa(i) + "]"
			ad, err := netip.ParseAddr(r)
			if err != nil || !ad.Is4() {
				return inputErr(field, "%q is not an IPv4 address", r)
			}
			if why := fr.conflict(netip.PrefixFrom(ad, 32)); why != "" {
				return inputErr(field, "resolver %s %s", ad, why)
			}
		}
	}
	return nil
}

// resolvers are the parsed resolvers of an app.
func resolvers(a *spec.App) []netip.Addr {
	var out []netip.Addr
	for _, r := range a.Resolvers {
		if ad, err := netip.ParseAddr(r); err == nil {
			out = append(out, ad)
		}
	}
	return out
}

// outbound is the Outbound of a host whose guests are gs (sorted by app,
// class, index): per app, each egress entry whose class runs here, then
// each local class's way to the app's resolvers (udp and tcp 53).
func (c *compiler) outbound(gs []Guest) []Outbound {
	var out []Outbound
	for start := 0; start < len(gs); {
		end := start
		for end < len(gs) && gs[end].App == gs[start].App {
			end++
		}
		appGuests := gs[start:end]
		start = end
		a := c.appByName(appGuests[0].App)
		if a == nil || (len(a.spec.Egress) == 0 && len(a.spec.Resolvers) == 0) {
			continue
		}
		byClass := map[string][]netip.Addr{}
		var classes []string
		for _, g := range appGuests {
			if _, ok := byClass[g.Class]; !ok {
				classes = append(classes, g.Class)
			}
			byClass[g.Class] = append(byClass[g.Class], g.Address)
		}
		for _, e := range a.spec.Egress {
			srcs := byClass[e.From]
			if len(srcs) == 0 {
				continue
			}
			ports := slices.Clone(e.Ports)
			slices.Sort(ports)
			out = append(out, Outbound{App: a.name, Class: e.From, Sources: sortAddrs(slices.Clone(srcs)),
				Dests: e.EgressDests(), Protocol: spec.Protocol(e.Protocol), Ports: slices.Compact(ports)})
		}
		if rs := resolvers(a.spec); len(rs) > 0 {
			var dests []netip.Prefix
			for _, r := range rs {
				dests = append(dests, netip.PrefixFrom(r, 32))
			}
			for _, cl := range classes {
				srcs := sortAddrs(slices.Clone(byClass[cl]))
				for _, proto := range []string{spec.ProtoUDP, spec.ProtoTCP} {
					out = append(out, Outbound{App: a.name, Class: cl, Sources: srcs, Dests: dests,
						Protocol: proto, Ports: []int{spec.DNSPort}})
				}
			}
		}
	}
	return out
}

// appByName is the app of that name, or nil. c.apps is in name order
// (loadApps): a binary search, since every rebuilt host looks up each of
// its apps (a scan of 50 apps' names was half a millisecond of a cached
// one-class change in benchFleet).
func (c *compiler) appByName(name string) *app {
	i, ok := slices.BinarySearchFunc(c.apps, name, func(a *app, name string) int { return strings.Compare(a.name, name) })
	if !ok {
		return nil
	}
	return c.apps[i]
}
