package spec

import (
	"fmt"
	"net/netip"
	"strings"
)

// Egress allows the tasks of class From to open connections to
// destinations outside Corridor: To lists IPv4 addresses or CIDRs, Ports
// the destination ports of Protocol. The traffic leaves by the task's own
// host's underlay, its source rewritten to the host's underlay address
// (SNAT). It is plain by definition: it leaves Corridor. Everything not
// named stays denied.
type Egress struct {
	From     string   `yaml:"from" json:"from"`
	To       []string `yaml:"to" json:"to"`
	Ports    []int    `yaml:"ports" json:"ports"`
	Protocol string   `yaml:"protocol,omitempty" json:"protocol,omitempty"` // default tcp
}

// Limits of the egress section.
const (
	MaxEgress       = 100 // egress entries of one app
	MaxEgressDests  = 100 // destinations of one entry
	MaxResolvers    = 3   // as resolv.conf reads
	DNSPort         = 53
	defaultPoolCIDR = "100.64.0.0/10" // compile.DefaultPool, the overlay
)

// reservedOutside are ranges no outside destination may touch: the
// overlay pool (guests), loopback, link-local (the guests' gateway
// 169.254.1.1), multicast and broadcast, and "this network".
var reservedOutside = []struct {
	p    netip.Prefix
	what string
}{
	{netip.MustParsePrefix(defaultPoolCIDR), "the overlay pool " + defaultPoolCIDR + " (guests' addresses)"},
	{netip.MustParsePrefix("0.0.0.0/8"), "0.0.0.0/8 (this network)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback 127.0.0.0/8"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local 169.254.0.0/16 (the guests' gateway)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast 224.0.0.0/4"},
	{netip.MustParsePrefix("255.255.255.255/32"), "broadcast"},
}

// ParseOutside reads an outside destination: an IPv4 address (as a /32)
// or CIDR without host bits.
func ParseOutside(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if !a.Is4() {
			return netip.Prefix{}, fmt.Errorf("%q is not IPv4: guests have IPv4 addresses only", truncate(s))
		}
		return netip.PrefixFrom(a, 32), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 address or CIDR such as 203.0.113.7 or 203.0.113.0/24", truncate(s))
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%q is not IPv4: guests have IPv4 addresses only", truncate(s))
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set: did you mean %s?", p, p.Masked())
	}
	return p, nil
}

// outsideReserved says which reserved range p overlaps, if any.
func outsideReserved(p netip.Prefix) string {
	for _, r := range reservedOutside {
		if r.p.Overlaps(p) {
			return r.what
		}
	}
	return ""
}

// OutsideConflict says why p may not be an outside destination given the
// app's overlay network (may be invalid) and the servers' underlay
// addresses: "" when it may. The compiler asks it again with the real
// pool, networks and servers.
func OutsideConflict(p netip.Prefix, overlay []netip.Prefix, underlay []netip.Addr) string {
	if why := outsideReserved(p); why != "" {
		return "overlaps " + why
	}
	for _, o := range overlay {
		if o.IsValid() && o.Overlaps(p) {
			return fmt.Sprintf("overlaps the overlay network %s", o)
		}
	}
	for _, a := range underlay {
		if p.Contains(a.Unmap()) {
			return fmt.Sprintf("holds the underlay address %s of a server (guests never reach the hosts' underlay addresses)", a)
		}
	}
	return ""
}

func validateEgress(w *where, a *App, classes map[string]int) {
	var own []netip.Prefix
	if p, err := netip.ParsePrefix(a.Network); err == nil {
		own = append(own, p.Masked())
	}
	if len(a.Egress) > MaxEgress {
		w.errorf("egress", "an app has at most %d egress entries, got %d: list several destinations in one entry", MaxEgress, len(a.Egress))
	}
	for i, e := range a.Egress {
		p := indexPath("egress", i)
		switch _, ok := classes[e.From]; {
		case e.From == "":
			w.errorf(p+".from", "from is required: the class whose tasks open the connections")
		case !ok:
			w.errorf(p+".from", "class %q is not defined in this app", truncate(e.From))
		}
		checkProtocol(w, p+".protocol", e.Protocol)
		switch {
		case len(e.To) == 0:
			w.errorf(p+".to", "at least one destination is required: an IPv4 address or CIDR outside Corridor")
		case len(e.To) > MaxEgressDests:
			w.errorf(p+".to", "at most %d destinations, got %d", MaxEgressDests, len(e.To))
		}
		seen := map[netip.Prefix]string{}
		for j, d := range e.To {
			dp := indexPath(p+".to", j)
			pre, err := ParseOutside(d)
			if err != nil {
				w.errorf(dp, "%v", err)
				continue
			}
			if why := OutsideConflict(pre, own, nil); why != "" {
				w.errorf(dp, "destination %s %s: name destinations outside Corridor", pre, why)
				continue
			}
			if prev, dup := seen[pre]; dup {
				w.errorf(dp, "destination %s is listed twice (also %s)", pre, w.ref(prev))
			}
			seen[pre] = dp
		}
		checkPorts(w, p+".ports", e.Ports, "")
	}
	if len(a.Resolvers) > MaxResolvers {
		w.errorf("resolvers", "at most %d resolvers (resolv.conf reads no more), got %d", MaxResolvers, len(a.Resolvers))
	}
	seen := map[netip.Addr]string{}
	for i, r := range a.Resolvers {
		rp := indexPath("resolvers", i)
		ad, err := netip.ParseAddr(r)
		if err != nil || !ad.Is4() {
			w.errorf(rp, "resolver %q is not an IPv4 address", truncate(r))
			continue
		}
		if why := OutsideConflict(netip.PrefixFrom(ad, 32), own, nil); why != "" {
			w.errorf(rp, "resolver %s %s: name a DNS server outside Corridor", ad, why)
			continue
		}
		if prev, dup := seen[ad]; dup {
			w.errorf(rp, "resolver %s is listed twice (also %s)", ad, w.ref(prev))
		}
		seen[ad] = rp
	}
}

// validateEgressAcross refuses an app's outside destination that overlaps
// another app's explicit network.
func validateEgressAcross(apps []App, wheres []*where) {
	var nets []netip.Prefix
	var owners []string
	for _, a := range apps {
		if p, err := netip.ParsePrefix(a.Network); err == nil && p.Addr().Is4() {
			nets = append(nets, p.Masked())
			owners = append(owners, a.Name)
		}
	}
	for i, a := range apps {
		for j, e := range a.Egress {
			for k, d := range e.To {
				pre, err := ParseOutside(d)
				if err != nil {
					continue
				}
				for n, o := range nets {
					if owners[n] != a.Name && o.Overlaps(pre) {
						wheres[i].errorf(indexPath(indexPath("egress", j)+".to", k),
							"destination %s overlaps network %s of app %q: reach another app through Corridor, not as an outside destination", pre, o, owners[n])
					}
				}
			}
		}
	}
}

// EgressDests is the parsed destinations of e, skipping unparsable ones
// (validation reports them).
func (e Egress) EgressDests() []netip.Prefix {
	var out []netip.Prefix
	for _, d := range e.To {
		if p, err := ParseOutside(strings.TrimSpace(d)); err == nil {
			out = append(out, p)
		}
	}
	return out
}
