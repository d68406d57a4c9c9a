package compile

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Ingress (spec.Publish): every entry host of a published port gets a
// hoststate.IngressEntry listing every task of the class as a backend. A
// backend on another host is reached like a remote guest: by the
// encrypted path (the backend's address among the allowed IPs of its
// host's WireGuard peer) or the plain one (in its host's VXLAN entry), as
// the published port says. The entry host rewrites the leg's source to
// its own address in the app's network (IngressEntry.Source, taken from
// the top of the network, below the broadcast address, one per entry
// host in server name order); the backend's host holds that address as a
// remote guest of the entry host (a peer's allowed IP or a VXLAN entry's
// guest) and a firewall rule from hoststate.IngressClass to the class on
// the class port, so that its reply goes back through the entry host by
// the same path.
//
// The additions are made after the hosts are built (and cached): they
// copy what they change, so that a cached host state is never modified.

// IngressEntry is the host-state type of a published port on its entry
// host.
type IngressEntry = hoststate.IngressEntry

// entryHosts gives every app the servers that are entry hosts of at least
// one of its published ports (in server order): servers not down whose
// labels match.
func (c *compiler) entryHosts() {
	for _, a := range c.apps {
		a.entries = nil
		// Most apps publish nothing: they need no look at the servers.
		if !slices.ContainsFunc(a.classes, func(cl *class) bool { return len(cl.spec.Publish) > 0 }) {
			continue
		}
		for _, s := range c.servers {
			for _, cl := range a.classes {
				if slices.ContainsFunc(cl.spec.Publish, func(p spec.Publish) bool { return isEntry(s, p) }) {
					a.entries = append(a.entries, s.idx)
					break
				}
			}
		}
	}
}

// isEntry says whether s publishes p.
func isEntry(s *server, p spec.Publish) bool {
	if s.state == spec.ServerDown {
		return false
	}
	for k, v := range p.On.Labels {
		if got, ok := s.spec.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// addrsNeeded is how many addresses of its network app a takes: one per
// task, one per entry host.
func (a *app) addrsNeeded() int { return a.numTasks + len(a.entries) }

// checkPublish refuses a client CIDR that overlaps the overlay (the pool,
// any app's network) or holds a server's underlay address, a published
// port whose entry host has no IPv4 address to publish on, an app network
// without room for its entry hosts' addresses, and two published ports
// listening on one address and port of one entry host. spec validation
// has refused what it could see from the apps alone, with file and line.
func (c *compiler) checkPublish(pool netip.Prefix) error {
	fr := fleetRanges{c: c, pool: pool}
	type listen struct {
		host  int32
		addr  netip.Addr
		proto string
		port  int
	}
	taken := map[listen]string{}
	for _, a := range c.apps {
		if len(a.entries) > 0 && usable(a.network) < int64(a.addrsNeeded()) {
			return inputErr("apps["+a.name+"].network", "%s has room for %d addresses, the app needs %d (%d tasks and one per entry host of its published ports, %d): give it a larger network",
				a.network, usable(a.network), a.addrsNeeded(), a.numTasks, len(a.entries))
		}
		for _, cl := range a.classes {
			for i, p := range cl.spec.Publish {
				field := "apps[" + a.name + "].classes[" + cl.name + "].publish[" + strconv.Itoa(i) + "]"
				for j, f := range p.From {
					pre, err := spec.ParseOutside(f)
					if err != nil {
						return inputErr(field+".from["+strconv.Itoa(j)+"]", "%v", err)
					}
					if why := fr.conflict(pre); why != "" {
						return inputErr(field+".from["+strconv.Itoa(j)+"]", "client CIDR %s %s", pre, why)
					}
				}
				virt := p.VirtualAddress()
				if p.On.Address != "" && !virt.Is4() {
					return inputErr(field+".on.address", "%q is not an IPv4 address", p.On.Address)
				}
				for _, si := range a.entries {
					s := c.servers[si]
					if !isEntry(s, p) {
						continue
					}
					ad := virt
					if !ad.IsValid() {
						ad = s.addr
					}
					if !ad.Is4() {
						return inputErr(field+".on", "server %s has the IPv6 underlay address %s and guests are IPv4: publish on an IPv4 address (on.address)", s.spec.Name, s.addr)
					}
					k := listen{si, ad, spec.Protocol(p.Protocol), p.Port}
					if prev, dup := taken[k]; dup {
						return inputErr(field+".port", "%s:%d/%s on server %s is already published by %s: one address and port lead to one class",
							ad, p.Port, k.proto, s.spec.Name, prev)
					}
					taken[k] = field
				}
			}
		}
	}
	return nil
}

// assignIngressSources gives each entry host of each app its address in
// the app's network: from the top down, below the broadcast address,
// skipping task addresses.
func (c *compiler) assignIngressSources() error {
	for _, a := range c.apps {
		a.sources = nil
		if len(a.entries) == 0 {
			continue
		}
		used := map[netip.Addr]bool{}
		for _, ti := range a.tasks {
			used[c.tasks[ti].addr] = true
		}
		next := lastAddr(a.network).Prev()
		for range a.entries {
			for next.IsValid() && taskAddrOK(a.network, next) && used[next] {
				next = next.Prev()
			}
			if !next.IsValid() || !taskAddrOK(a.network, next) {
				return inputErr("apps["+a.name+"].network", "%s has no free address for an entry host of the app's published ports: give the app a larger network", a.network)
			}
			a.sources = append(a.sources, next)
			next = next.Prev()
		}
	}
	return nil
}

// source is entry host si's address in app a's network.
func (a *app) source(si int32) netip.Addr {
	i, _ := slices.BinarySearch(a.entries, si)
	return a.sources[i]
}

// hostAdd is what ingress adds to one host's state.
type hostAdd struct {
	ingress  []IngressEntry
	enc      map[int32][]netip.Addr // remote server -> addresses reached encrypted
	plain    map[int32][]netip.Addr // remote server -> addresses reached in plain
	firewall []FirewallRule
}

// addIngress adds every published port to the hosts' states (out, in
// server order), copying what it changes.
func (c *compiler) addIngress(out []HostState) {
	adds := map[int32]*hostAdd{}
	get := func(si int32) *hostAdd {
		h := adds[si]
		if h == nil {
			h = &hostAdd{enc: map[int32][]netip.Addr{}, plain: map[int32][]netip.Addr{}}
			adds[si] = h
		}
		return h
	}
	for _, a := range c.apps {
		if len(a.entries) == 0 {
			continue
		}
		for _, cl := range a.classes {
			if len(cl.spec.Publish) == 0 {
				continue
			}
			tasks := slices.Clone(cl.tasks)
			slices.SortFunc(tasks, func(x, y int32) int { return c.tasks[x].addr.Compare(c.tasks[y].addr) })
			// Per backend host and protocol: the entry hosts' sources
			// and the class ports they reach.
			type legKey struct {
				host  int32
				proto string
			}
			legSrcs := map[legKey][]netip.Addr{}
			legPorts := map[legKey][]int{}
			encrypt := false
			for _, p := range cl.spec.Publish {
				encrypt = p.Encrypted()
				proto := spec.Protocol(p.Protocol)
				var clients []netip.Prefix
				for _, cp := range p.Clients() {
					clients = append(clients, cp.Masked())
				}
				slices.SortFunc(clients, func(x, y netip.Prefix) int {
					return cmp.Or(x.Addr().Compare(y.Addr()), x.Bits()-y.Bits())
				})
				clients = slices.Compact(clients)
				for _, si := range a.entries {
					s := c.servers[si]
					if !isEntry(s, p) {
						continue
					}
					addr := p.VirtualAddress()
					if !addr.IsValid() {
						addr = s.addr
					}
					src := a.source(si)
					e := IngressEntry{App: a.name, Class: cl.name, Network: a.network, Address: addr,
						Port: p.Port, Protocol: proto, ToPort: p.ToPort(), Clients: clients,
						Encrypt: p.Encrypted(), Source: src, Backends: []hoststate.Backend{}}
					h := get(si)
					for _, ti := range tasks {
						t := &c.tasks[ti]
						b := hoststate.Backend{Task: t.id, Address: t.addr, Server: c.servers[t.server].spec.Name}
						if t.server == si {
							b.Local = true
						} else {
							b.Encrypt = p.Encrypted()
							th := get(t.server)
							if b.Encrypt {
								h.enc[t.server] = append(h.enc[t.server], t.addr)
								th.enc[si] = append(th.enc[si], src)
							} else {
								h.plain[t.server] = append(h.plain[t.server], t.addr)
								th.plain[si] = append(th.plain[si], src)
							}
							k := legKey{t.server, proto}
							legSrcs[k] = append(legSrcs[k], src)
							legPorts[k] = append(legPorts[k], p.ToPort())
						}
						e.Backends = append(e.Backends, b)
					}
					h.ingress = append(h.ingress, e)
				}
			}
			keys := make([]legKey, 0, len(legSrcs))
			for k := range legSrcs {
				keys = append(keys, k)
			}
			slices.SortFunc(keys, func(x, y legKey) int { return cmp.Or(cmp.Compare(x.host, y.host), strings.Compare(x.proto, y.proto)) })
			for _, k := range keys {
				var dests []netip.Addr
				for _, ti := range tasks {
					if c.tasks[ti].server == k.host {
						dests = append(dests, c.tasks[ti].addr)
					}
				}
				srcs := sortAddrs(legSrcs[k])
				ports := legPorts[k]
				slices.Sort(ports)
				get(k.host).firewall = append(get(k.host).firewall, FirewallRule{
					App: a.name, FromClass: hoststate.IngressClass, ToClass: cl.name, Direction: Ingress,
					Sources: srcs, Dests: dests, Protocol: k.proto, Ports: slices.Compact(ports),
					Encrypt: encrypt, RemoteSources: srcs,
				})
			}
		}
	}
	for si, h := range adds {
		c.applyAdd(&out[si], h)
	}
}

// applyAdd merges h into hs, copying every slice it changes.
func (c *compiler) applyAdd(hs *HostState, h *hostAdd) {
	if len(h.enc) > 0 || len(h.plain) > 0 {
		// The backends reached through this entry host are in no route
		// group of it: its lists are held in full.
		*hs = hs.Filled()
	}
	hs.Ingress = h.ingress
	if len(h.firewall) > 0 {
		hs.Firewall = append(slices.Clip(hs.Firewall), h.firewall...)
	}
	if len(h.enc) > 0 {
		peers := slices.Clone(hs.Peers)
		for rs, addrs := range h.enc {
			s := c.servers[rs]
			i := slices.IndexFunc(peers, func(p Peer) bool { return p.Server == s.spec.Name })
			if i < 0 {
				peers = append(peers, Peer{Server: s.spec.Name, PublicKey: s.spec.PublicKey, NextPublicKey: s.rot.next,
					Endpoint: netip.AddrPortFrom(s.addr, uint16(s.wgPort))})
				i = len(peers) - 1
			}
			ips := slices.Clone(peers[i].AllowedIPs)
			for _, ad := range addrs {
				ips = append(ips, netip.PrefixFrom(ad, ad.BitLen()))
			}
			slices.SortFunc(ips, func(x, y netip.Prefix) int { return cmp.Or(x.Addr().Compare(y.Addr()), x.Bits()-y.Bits()) })
			peers[i].AllowedIPs = slices.Clip(slices.Compact(ips))
		}
		slices.SortFunc(peers, func(x, y Peer) int { return strings.Compare(x.Server, y.Server) })
		hs.Peers = peers
	}
	if len(h.plain) > 0 {
		vx := slices.Clone(hs.VXLAN)
		for rs, addrs := range h.plain {
			s := c.servers[rs]
			i := slices.IndexFunc(vx, func(v VXLANEntry) bool { return v.Server == s.spec.Name })
			if i < 0 {
				vx = append(vx, VXLANEntry{Server: s.spec.Name, Underlay: s.addr, MAC: VTEPMAC(s.addr)})
				i = len(vx) - 1
			}
			vx[i].Guests = sortAddrs(append(slices.Clone(vx[i].Guests), addrs...))
		}
		slices.SortFunc(vx, func(x, y VXLANEntry) int { return strings.Compare(x.Server, y.Server) })
		hs.VXLAN = vx
	}
}
