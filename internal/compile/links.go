package compile

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/corridor-dev/corridor/internal/spec"
)

// App to app: an app's rules to the services it imports (spec.Import)
// become links between one of its classes and the exporting app's class,
// on the exported ports the rules name. A link is a rule like any other
// for paths, routes, peers, VXLAN entries and firewall rules, on both
// hosts, with its own encrypt; only the two apps' networks differ. Links
// are computed whole on every compile (they are few), outside the per-app
// parts of the cache: an importer's fingerprint holds those of the apps it
// imports from, and a host's cache key the generations of the apps linked
// to its own.

// Unresolved is a rule to an imported service that gives no path on some
// or all of its ports.
type Unresolved struct {
	App     string `json:"app"`
	Rule    int    `json:"rule"` // index in the app's rules
	From    string `json:"from"`
	To      string `json:"to"`      // the import's name in the rule
	Service string `json:"service"` // "<app>/<service>"
	Ports   []int  `json:"ports"`   // the rule's ports without a path
	Why     string `json:"why"`
}

// link is one resolved pair of classes across apps, merged over the
// rules of one (from, to, protocol), as rule is within an app.
type link struct {
	fromApp, toApp *app
	from, to       *class
	protocol       string
	ports          []int
	encrypt        bool
}

// importEnv is one import's CORRIDOR_PEERS_<AS> for a class of the
// importer: the exporting class's tasks on the ports its rules reach.
type importEnv struct {
	from  *class
	name  string // the variable
	to    *class
	ports []int
}

// resolveLinks resolves every app's rules to imported services.
func (c *compiler) resolveLinks() error {
	byName := make(map[string]*app, len(c.apps))
	for _, a := range c.apps {
		byName[a.name] = a
	}
	type key struct {
		from, to *class
		proto    string
	}
	merged := map[key]int{}
	pairs := map[[2]string]string{} // unordered pair of app/class -> field of its first rule
	pairEnc := map[[2]string]bool{}
	for _, a := range c.apps {
		envs := map[[2]string]int{} // (from class, alias) -> index in a.imports
		for _, ri := range a.cross {
			r := a.spec.Rules[ri]
			rf := "apps[" + a.name + "].rules[" + strconv.Itoa(ri) + "]"
			from := a.class(r.From)
			im := a.spec.ImportOf(r.To)
			proto := spec.Protocol(r.Protocol)
			if proto != spec.ProtoTCP && proto != spec.ProtoUDP {
				return inputErr(rf+".protocol", "%q is not tcp or udp", r.Protocol)
			}
			if len(r.Ports) == 0 {
				return inputErr(rf+".ports", "is empty: a rule allows at least one port")
			}
			for _, p := range r.Ports {
				if p < 1 || p > 65535 {
					return inputErr(rf+".ports", "%d is not a port", p)
				}
			}
			un := Unresolved{App: a.name, Rule: ri, From: r.From, To: r.To, Service: im.Service, Ports: sortedPorts(r.Ports)}
			appName, svc, err := spec.ParseService(im.Service)
			other := byName[appName]
			var exp *spec.Export
			var to *class
			switch {
			case err != nil:
				un.Why = err.Error()
			case other == nil || other == a:
				un.Why = fmt.Sprintf("no app %s", appName)
			default:
				if exp = other.spec.Export(svc); exp == nil {
					un.Why = fmt.Sprintf("app %s does not export %s", appName, svc)
				} else if to = other.class(exp.Class); to == nil {
					un.Why = fmt.Sprintf("app %s exports %s from class %s, which it does not have", appName, svc, exp.Class)
				} else if spec.Protocol(exp.Protocol) != proto {
					un.Why = fmt.Sprintf("%s is exported on %s, not %s", im.Service, spec.Protocol(exp.Protocol), proto)
				}
			}
			if un.Why != "" {
				c.unresolved = append(c.unresolved, un)
				continue
			}
			var ok, missing []int
			for _, p := range un.Ports {
				if slices.Contains(exp.Ports, p) {
					ok = append(ok, p)
				} else {
					missing = append(missing, p)
				}
			}
			if len(missing) > 0 {
				un.Ports, un.Why = missing, fmt.Sprintf("%s does not export %s", im.Service, joinInts(missing))
				c.unresolved = append(c.unresolved, un)
			}
			if len(ok) == 0 {
				continue
			}
			pk := [2]string{a.name + "/" + from.name, other.name + "/" + to.name}
			if pk[0] > pk[1] {
				pk[0], pk[1] = pk[1], pk[0]
			}
			if f, seen := pairs[pk]; seen && pairEnc[pk] != r.Encrypt {
				return inputErr(rf+".encrypt", "%t, but %s says %t for the same classes %s and %s: a class pair is encrypted or not as a whole",
					r.Encrypt, f, pairEnc[pk], pk[0], pk[1])
			} else if !seen {
				pairs[pk], pairEnc[pk] = rf, r.Encrypt
			}
			k := key{from, to, proto}
			if li, dup := merged[k]; dup {
				c.links[li].ports = append(c.links[li].ports, ok...)
			} else {
				merged[k] = len(c.links)
				c.links = append(c.links, link{fromApp: a, toApp: other, from: from, to: to, protocol: proto, ports: ok, encrypt: r.Encrypt})
			}
			ek := [2]string{from.name, r.To}
			if ei, dup := envs[ek]; dup {
				a.imports[ei].ports = append(a.imports[ei].ports, ok...)
			} else {
				envs[ek] = len(a.imports)
				a.imports = append(a.imports, importEnv{from: from, name: spec.PeersEnvName(r.To), to: to, ports: ok})
			}
		}
		for i := range a.imports {
			a.imports[i].ports = sortedPorts(a.imports[i].ports)
		}
	}
	for i := range c.links {
		c.links[i].ports = sortedPorts(c.links[i].ports)
	}
	slices.SortFunc(c.links, func(x, y link) int {
		return cmp.Or(strings.Compare(x.fromApp.name, y.fromApp.name), strings.Compare(x.from.name, y.from.name),
			strings.Compare(x.toApp.name, y.toApp.name), strings.Compare(x.to.name, y.to.name), strings.Compare(x.protocol, y.protocol))
	})
	for i, l := range c.links {
		l.fromApp.links = append(l.fromApp.links, i)
	}
	slices.SortFunc(c.unresolved, func(x, y Unresolved) int {
		return cmp.Or(strings.Compare(x.App, y.App), cmp.Compare(x.Rule, y.Rule))
	})
	return nil
}

func sortedPorts(p []int) []int {
	p = slices.Clone(p)
	slices.Sort(p)
	return slices.Compact(p)
}

func joinInts(p []int) string {
	s := make([]string, len(p))
	for i, x := range p {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

// importEnv is the CORRIDOR_PEERS_<AS> variables of class cl's tasks.
func (a *app) importEnv(cl *class) []envVar {
	var out []envVar
	for _, im := range a.imports {
		if im.from != cl {
			continue
		}
		var b strings.Builder
		for _, ad := range im.to.addrs {
			for _, p := range im.ports {
				if b.Len() > 0 {
					b.WriteByte(',')
				}
				b.WriteString(netip.AddrPortFrom(ad, uint16(p)).String())
			}
		}
		out = append(out, envVar{im.name, b.String()})
	}
	return out
}

// linkTargets appends to targets (the destinations of class cl's own
// rules, in class name order) those of app a's links from cl, one per
// class of an imported service with its links by protocol (c.links is
// sorted so), and orders them all by (app, class): the order of paths
// within an app, where the paths to another app's tasks fall among the
// app's own by app name.
func (c *compiler) linkTargets(targets []pathTarget, a *app, cl *class, ptasks func(*class) []pathTask) []pathTarget {
	own := len(targets)
	for _, li := range a.links {
		l := &c.links[li]
		if l.from != cl || len(l.to.tasks) == 0 {
			continue
		}
		r := pathRule{protocol: l.protocol, ports: l.ports, encrypt: l.encrypt}
		if n := len(targets); n > own && targets[n-1].toApp == l.toApp.name && targets[n-1].class == l.to.name {
			targets[n-1].rules = append(targets[n-1].rules, r)
			continue
		}
		targets = append(targets, pathTarget{toApp: l.toApp.name, class: l.to.name, tasks: ptasks(l.to), rules: []pathRule{r}})
	}
	if len(targets) > own {
		app := func(t *pathTarget) string { return cmp.Or(t.toApp, a.name) }
		slices.SortStableFunc(targets, func(x, y pathTarget) int {
			return cmp.Or(strings.Compare(app(&x), app(&y)), strings.Compare(x.class, y.class))
		})
	}
	return targets
}

// linkGens extends a host's cache key (the generations of its apps) with
// those of the apps linked to them, after a 0 (no generation is 0).
func (c *compiler) linkGens(gens []uint64, apps []hostApp) []uint64 {
	if len(c.links) == 0 {
		return gens
	}
	gens = append(gens, 0)
	for _, ha := range apps {
		for _, l := range c.links {
			switch ha.a {
			case l.fromApp:
				gens = append(gens, l.toApp.entry.gen)
			case l.toApp:
				gens = append(gens, l.fromApp.entry.gen)
			}
		}
	}
	return gens
}

// localAddrs are the sorted addresses of cl's tasks on server s.
func (c *compiler) localAddrs(cl *class, s *server) []netip.Addr {
	var out []netip.Addr
	for _, ti := range cl.tasks {
		if c.tasks[ti].server == s.idx {
			out = append(out, c.tasks[ti].addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// addLinks adds to host s's state what the links of its tasks need, as
// for a rule within an app: on the importer's side an egress firewall
// rule, routes to the exporter's remote tasks and those tasks as peers'
// allowed IPs or VXLAN guests; on the exporter's side an ingress rule,
// routes back to the importer's remote tasks and those as peers or VXLAN
// guests. Every list it changes is made anew: the state's slices may be
// shared with the cache's parts. It says whether it changed hs.
func (c *compiler) addLinks(hs *HostState, s *server) bool {
	if len(c.links) == 0 || len(s.guestIdx) == 0 {
		return false
	}
	var fw []FirewallRule
	type rkey struct {
		dest netip.Addr
		enc  bool
	}
	routes := map[rkey]*Route{}
	enc := map[int32][]netip.Prefix{}
	plain := map[int32][]netip.Addr{}
	reach := func(src []netip.Addr, to *class, e bool) {
		for _, ti := range to.tasks {
			t := &c.tasks[ti]
			if t.server == s.idx {
				continue
			}
			k := rkey{t.addr, e}
			if r := routes[k]; r != nil {
				r.Sources = append(r.Sources, src...)
			} else {
				routes[k] = &Route{Sources: slices.Clone(src), Dest: t.addr, Server: c.servers[t.server].spec.Name, Encrypt: e}
			}
			if e {
				enc[t.server] = append(enc[t.server], netip.PrefixFrom(t.addr, t.addr.BitLen()))
			} else {
				plain[t.server] = append(plain[t.server], t.addr)
			}
		}
	}
	for i := range c.links {
		l := &c.links[i]
		if len(l.from.tasks) == 0 || len(l.to.tasks) == 0 {
			continue
		}
		lf, lt := c.localAddrs(l.from, s), c.localAddrs(l.to, s)
		if len(lf) > 0 {
			fw = append(fw, FirewallRule{App: l.fromApp.name, FromClass: l.from.name, ToApp: l.toApp.name, ToClass: l.to.name,
				Direction: Egress, Sources: lf, Dests: slices.Clip(l.to.addrs), Protocol: l.protocol, Ports: l.ports, Encrypt: l.encrypt})
			reach(lf, l.to, l.encrypt)
		}
		if len(lt) > 0 {
			fw = append(fw, FirewallRule{App: l.fromApp.name, FromClass: l.from.name, ToApp: l.toApp.name, ToClass: l.to.name,
				Direction: Ingress, Sources: slices.Clip(l.from.addrs), Dests: lt, Protocol: l.protocol, Ports: l.ports, Encrypt: l.encrypt,
				RemoteSources: without(l.from.addrs, lf)})
			reach(lt, l.from, l.encrypt)
		}
	}
	if len(fw) == 0 {
		return false
	}
	// The links' guests are in no route group: the peers and VXLAN
	// entries of a linked host hold their lists in full.
	*hs = hs.Filled()
	hs.Firewall = append(slices.Clone(hs.Firewall), fw...)
	slices.SortStableFunc(hs.Firewall, func(x, y FirewallRule) int {
		return cmp.Or(strings.Compare(x.App, y.App), strings.Compare(x.FromClass, y.FromClass), strings.Compare(x.ToApp, y.ToApp),
			strings.Compare(x.ToClass, y.ToClass), strings.Compare(x.Protocol, y.Protocol), strings.Compare(x.Direction, y.Direction))
	})

	// Routes: one per destination and encryption, sources merged.
	// A host with links holds its routes expanded (app-to-app routes
	// merge their sources into the app's own).
	rs := slices.Clone(hs.AllRoutes())
	for i := range rs {
		if r := routes[rkey{rs[i].Dest, rs[i].Encrypt}]; r != nil {
			rs[i].Sources = sortAddrs(append(slices.Clone(rs[i].Sources), r.Sources...))
			delete(routes, rkey{rs[i].Dest, rs[i].Encrypt})
		}
	}
	for _, r := range routes {
		r.Sources = sortAddrs(r.Sources)
		rs = append(rs, *r)
	}
	slices.SortStableFunc(rs, func(x, y Route) int {
		return cmp.Or(x.Dest.Compare(y.Dest), cmp.Compare(b2i(x.Encrypt), b2i(y.Encrypt)))
	})
	hs.Routes, hs.RouteGroups = rs, nil

	// Peers and VXLAN entries: merged per remote server, by name.
	peers := slices.Clone(hs.Peers)
	for si, pre := range enc {
		rsv := c.servers[si]
		i := slices.IndexFunc(peers, func(p Peer) bool { return p.Server == rsv.spec.Name })
		if i < 0 {
			peers = append(peers, Peer{Server: rsv.spec.Name, PublicKey: rsv.spec.PublicKey, NextPublicKey: rsv.rot.next,
				Endpoint: netip.AddrPortFrom(rsv.addr, uint16(rsv.wgPort))})
			i = len(peers) - 1
		}
		all := append(slices.Clone(peers[i].AllowedIPs), pre...)
		slices.SortFunc(all, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
		peers[i].AllowedIPs = slices.Clip(slices.Compact(all))
	}
	slices.SortFunc(peers, func(x, y Peer) int { return strings.Compare(x.Server, y.Server) })
	hs.Peers = peers
	vx := slices.Clone(hs.VXLAN)
	for si, gs := range plain {
		rsv := c.servers[si]
		i := slices.IndexFunc(vx, func(v VXLANEntry) bool { return v.Server == rsv.spec.Name })
		if i < 0 {
			vx = append(vx, VXLANEntry{Server: rsv.spec.Name, Underlay: rsv.addr, MAC: VTEPMAC(rsv.addr)})
			i = len(vx) - 1
		}
		vx[i].Guests = sortAddrs(append(slices.Clone(vx[i].Guests), gs...))
	}
	slices.SortFunc(vx, func(x, y VXLANEntry) int { return strings.Compare(x.Server, y.Server) })
	hs.VXLAN = vx
	return true
}
