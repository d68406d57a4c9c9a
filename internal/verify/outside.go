package verify

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// OutsideClass is the ToClass of a check whose destination is outside
// Corridor (an egress destination or a resolver, ToAddr).
const OutsideClass = "outside"

// outsideRule is one allowance of a class to outside destinations.
type outsideRule struct {
	dests []netip.Prefix
	proto string
	ports []int
}

// outsideChecks are the egress checks of app target (issue 15): from
// every task of a class with egress, to each single-address destination
// (a CIDR names no address known to answer) on each named port: reached
// (Plain: the marker crosses the underlay in plain, which is what egress
// is; or Open: the outside host answered with a reset); on one port not
// named for that destination: Denied. And from every task of each other
// class, to the same destination on the named ports: Denied (the
// positive control is the allowed check beside it). The resolvers are
// reached by every class on tcp/53.
func outsideChecks(app string, target *spec.App, own []compile.Task) []Check {
	rules := map[string][]outsideRule{} // class -> allowances
	var classes []string
	for _, c := range target.Classes {
		classes = append(classes, c.Name)
	}
	for _, e := range target.Egress {
		r := outsideRule{proto: protoOf(e.Protocol), ports: e.Ports}
		for _, s := range e.To {
			if p, err := spec.ParseOutside(s); err == nil {
				r.dests = append(r.dests, p)
			}
		}
		rules[e.From] = append(rules[e.From], r)
	}
	var resolvers []netip.Prefix
	for _, s := range target.Resolvers {
		if a, err := netip.ParseAddr(s); err == nil {
			resolvers = append(resolvers, netip.PrefixFrom(a, 32))
		}
	}
	if len(resolvers) > 0 {
		for _, cl := range classes {
			rules[cl] = append(rules[cl], outsideRule{dests: resolvers, proto: spec.ProtoTCP, ports: []int{53}})
		}
	}
	// allowedPorts: the ports class may reach addr on with proto, from
	// every allowance whose destinations hold addr.
	allowedPorts := func(class string, addr netip.Addr, proto string) map[int]bool {
		out := map[int]bool{}
		for _, r := range rules[class] {
			if r.proto != proto || !slices.ContainsFunc(r.dests, func(p netip.Prefix) bool { return p.Contains(addr) }) {
				continue
			}
			for _, p := range r.ports {
				out[p] = true
			}
		}
		return out
	}
	// The probed destinations: every single address an allowance names.
	type target3 struct {
		addr  netip.Addr
		proto string
	}
	var probed []target3
	seen := map[target3]bool{}
	for _, cl := range classes {
		for _, r := range rules[cl] {
			for _, p := range r.dests {
				t := target3{p.Addr(), r.proto}
				if p.Bits() == 32 && !seen[t] {
					seen[t] = true
					probed = append(probed, t)
				}
			}
		}
	}
	slices.SortFunc(probed, func(a, b target3) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		if a.proto < b.proto {
			return -1
		}
		if a.proto > b.proto {
			return 1
		}
		return 0
	})
	var checks []Check
	for _, t := range probed {
		// Every port any class may reach t on: allowed for some, denied
		// for the others.
		named := map[int]bool{}
		for _, cl := range classes {
			for p := range allowedPorts(cl, t.addr, t.proto) {
				named[p] = true
			}
		}
		for _, src := range own {
			mine := allowedPorts(src.Class, t.addr, t.proto)
			ports := sortedInts(named)
			if len(mine) > 0 {
				ports = append(ports, unusedPort(named))
			}
			for _, port := range ports {
				c := Check{
					App: app, FromApp: app, FromClass: src.Class, ToClass: OutsideClass,
					FromTask: src.ID, FromServer: src.Server, ToAddr: t.addr.String(),
					Protocol: t.proto, Port: port, Expect: Denied,
				}
				if mine[port] {
					c.Expect = Plain
				}
				checks = append(checks, c)
			}
		}
	}
	return checks
}

// classifyOutside is classify for a destination outside Corridor: no
// WireGuard is expected; a connection whose marker the capture did not
// see on the underlay proves nothing about the way it took.
func classifyOutside(res api.ProbeResult, err error) (string, string) {
	if err != nil {
		return Incomplete, err.Error()
	}
	if res.MarkerSeen {
		return Plain, fmt.Sprintf("rtt %s", res.RTT.Round(time.Microsecond))
	}
	if obs, detail, ok := unconnected(res, "connection refused by the outside host: reached"); ok {
		return obs, detail
	}
	return Incomplete, "connected, but the marker was not seen on the underlay: the capture cannot vouch for the way it took"
}
