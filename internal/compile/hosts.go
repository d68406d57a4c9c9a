package compile

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/corridor-dev/corridor/internal/spec"
)

// VTEPMAC is the MAC address of the corv0 device of the host with the given
// underlay address: locally administered, unicast, and derived from the
// address alone so that every host computes the same MAC for a peer
// without asking it. IPv4 underlays map one to one (02:c0 + the four
// bytes); IPv6 ones use four bytes of a SHA-256 under 02:c6.
func VTEPMAC(underlay netip.Addr) string {
	underlay = underlay.Unmap()
	if underlay.Is4() {
		b := underlay.As4()
		return fmt.Sprintf("02:c0:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
	}
	b := underlay.As16()
	h := sha256.Sum256(b[:])
	return fmt.Sprintf("02:c6:%02x:%02x:%02x:%02x", h[0], h[1], h[2], h[3])
}

// HostIf is the name of the host-side interface (veth or tap) of a task's
// guest: "corg" and 10 hex digits of SHA-256 of the task ID, 14 bytes,
// within Linux's 15-byte limit on interface names.
func HostIf(taskID string) string {
	h := sha256.Sum256([]byte(taskID))
	return "corg" + hex.EncodeToString(h[:5])
}

// hosts derives every host's desired state. Each host is built from the
// apps it runs a task of, and touches only those apps' tasks: the cost of a
// host is the size of its apps, never the size of the fleet.
func (c *compiler) hosts() []HostState {
	// Apps in the order of their networks, which do not overlap: scanning
	// each app's tasks by address then yields routes sorted by address.
	byNet := slices.Clone(c.apps)
	slices.SortFunc(byNet, func(x, y *app) int { return x.network.Addr().Compare(y.network.Addr()) })
	for _, a := range byNet {
		a.byAddr = slices.Clone(a.tasks)
		slices.SortFunc(a.byAddr, func(x, y int32) int { return c.tasks[x].addr.Compare(c.tasks[y].addr) })
	}
	n := len(c.servers)
	hb := hostBuilder{c: c, slot: make([]int32, n), nEnc: make([]int32, n), nPlain: make([]int32, n), mac: make([]string, n)}
	for i, s := range c.servers {
		hb.mac[i] = VTEPMAC(s.addr)
	}
	out := make([]HostState, len(c.servers))
	for i, s := range c.servers {
		out[i] = hb.build(s, byNet)
	}
	return out
}

// hostBuilder holds the scratch space reused from host to host.
type hostBuilder struct {
	c       *compiler
	mac     []string // VTEPMAC per server
	slot    []int32  // per server: 1 + its index in remotes, 0 if none
	nEnc    []int32  // per server: remote tasks reached encrypted
	nPlain  []int32  // per server: remote tasks reached in plain
	touched []int32  // servers with a count, for resetting
	remotes []remoteAcc
	apps    []hostApp
}

// remoteAcc holds what one host reaches on one remote server.
type remoteAcc struct {
	server int32
	enc    []netip.Prefix
	plain  []netip.Addr
}

// hostApp is one app of the host being built: for each class, the sources
// of routes to that class's tasks, by encryption. A route's sources depend
// only on the destination's class: they are the local tasks of every class
// it shares a rule with (either way), so one slice serves every
// destination of the class.
type hostApp struct {
	a    *app
	srcs [][2][]netip.Addr
}

func (hb *hostBuilder) build(s *server, byNet []*app) HostState {
	c := hb.c
	hs := HostState{
		Host: s.spec.Name, Address: s.addr, VTEPMAC: hb.mac[s.idx], WireGuardPort: s.wgPort,
		Guests: c.guests(s), Peers: []Peer{}, VXLAN: []VXLANEntry{}, Routes: []Route{}, Firewall: []FirewallRule{},
	}
	if len(s.guestIdx) == 0 {
		return hs
	}
	onHost := make(map[*app]bool, 4)
	for _, ti := range s.guestIdx {
		onHost[c.tasks[ti].app] = true
	}
	hb.apps = hb.apps[:0]
	for _, a := range byNet {
		if onHost[a] {
			hb.apps = append(hb.apps, hostApp{a: a, srcs: hb.appRules(&hs, s, a)})
		}
	}
	// Two passes over the remote tasks: count, then fill slices of the
	// exact size. Tasks come by address, so each list comes out sorted.
	hb.touched = hb.touched[:0]
	nRoutes := 0
	hb.scan(s, func(t *task, enc bool, _ []netip.Addr) {
		if hb.nEnc[t.server] == 0 && hb.nPlain[t.server] == 0 {
			hb.touched = append(hb.touched, t.server)
		}
		if enc {
			hb.nEnc[t.server]++
		} else {
			hb.nPlain[t.server]++
		}
		nRoutes++
	})
	slices.Sort(hb.touched)
	hb.remotes = hb.remotes[:0]
	nPeers, nVX := 0, 0
	for i, rs := range hb.touched {
		r := remoteAcc{server: rs}
		if n := hb.nEnc[rs]; n > 0 {
			r.enc = make([]netip.Prefix, 0, n)
			nPeers++
		}
		if n := hb.nPlain[rs]; n > 0 {
			r.plain = make([]netip.Addr, 0, n)
			nVX++
		}
		hb.nEnc[rs], hb.nPlain[rs] = 0, 0
		hb.remotes = append(hb.remotes, r)
		hb.slot[rs] = int32(i + 1)
	}
	hs.Routes = make([]Route, 0, nRoutes)
	hb.scan(s, func(t *task, enc bool, src []netip.Addr) {
		r := &hb.remotes[hb.slot[t.server]-1]
		if enc {
			r.enc = append(r.enc, netip.PrefixFrom(t.addr, t.addr.BitLen()))
		} else {
			r.plain = append(r.plain, t.addr)
		}
		hs.Routes = append(hs.Routes, Route{Sources: src, Dest: t.addr, Server: c.servers[t.server].spec.Name, Encrypt: enc})
	})
	hs.Peers = make([]Peer, 0, nPeers)
	hs.VXLAN = make([]VXLANEntry, 0, nVX)
	for _, r := range hb.remotes {
		hb.slot[r.server] = 0
		rs := c.servers[r.server]
		if len(r.enc) > 0 {
			hs.Peers = append(hs.Peers, Peer{Server: rs.spec.Name, PublicKey: rs.spec.PublicKey,
				Endpoint: netip.AddrPortFrom(rs.addr, uint16(rs.wgPort)), AllowedIPs: r.enc})
		}
		if len(r.plain) > 0 {
			hs.VXLAN = append(hs.VXLAN, VXLANEntry{Server: rs.spec.Name, Underlay: rs.addr,
				MAC: hb.mac[r.server], Guests: r.plain})
		}
	}
	slices.SortStableFunc(hs.Firewall, func(x, y FirewallRule) int {
		return cmp.Or(strings.Compare(x.App, y.App), strings.Compare(x.FromClass, y.FromClass),
			strings.Compare(x.ToClass, y.ToClass), strings.Compare(x.Protocol, y.Protocol),
			strings.Compare(x.Direction, y.Direction))
	})
	return hs
}

// scan calls f for every remote task a local task of s has a path with,
// once per encryption, in address order (plain before encrypted).
func (hb *hostBuilder) scan(s *server, f func(t *task, enc bool, srcs []netip.Addr)) {
	for _, ha := range hb.apps {
		for _, ti := range ha.a.byAddr {
			t := &hb.c.tasks[ti]
			if t.server == s.idx {
				continue
			}
			for e, src := range ha.srcs[t.class.pos] {
				if len(src) > 0 {
					f(t, e == 1, src)
				}
			}
		}
	}
}

// appRules adds host s's firewall rules for app a and returns, per class
// and encryption, the local sources of routes to that class.
func (hb *hostBuilder) appRules(hs *HostState, s *server, a *app) [][2][]netip.Addr {
	c := hb.c
	n := len(a.classes)
	local := make([][]netip.Addr, n)
	for _, ti := range s.guestIdx {
		if t := &c.tasks[ti]; t.app == a {
			local[t.class.pos] = append(local[t.class.pos], t.addr)
		}
	}
	for _, l := range local {
		slices.SortFunc(l, netip.Addr.Compare)
	}
	srcs := make([][2][]netip.Addr, n) // [class][encrypt]
	for ri := range a.rules {
		r := &a.rules[ri]
		A, B := r.from, r.to
		if len(A.tasks) == 0 || len(B.tasks) == 0 || (A == B && len(A.tasks) < 2) {
			continue // no path: nothing to allow
		}
		e := b2i(r.encrypt)
		la, lb := local[A.pos], local[B.pos]
		if len(la) > 0 {
			srcs[B.pos][e] = append(srcs[B.pos][e], la...)
			hs.Firewall = append(hs.Firewall, FirewallRule{
				App: a.name, FromClass: A.name, ToClass: B.name, Direction: Egress,
				Sources: slices.Clip(la), Dests: slices.Clip(B.addrs),
				Protocol: r.protocol, Ports: r.ports, Encrypt: r.encrypt,
			})
		}
		if len(lb) > 0 {
			srcs[A.pos][e] = append(srcs[A.pos][e], lb...)
			hs.Firewall = append(hs.Firewall, FirewallRule{
				App: a.name, FromClass: A.name, ToClass: B.name, Direction: Ingress,
				Sources: slices.Clip(A.addrs), Dests: slices.Clip(lb),
				Protocol: r.protocol, Ports: r.ports, Encrypt: r.encrypt,
				RemoteSources: without(A.addrs, la),
			})
		}
	}
	for i := range srcs {
		for e := range srcs[i] {
			srcs[i][e] = sortAddrs(srcs[i][e])
		}
	}
	return srcs
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// without is all minus drop, both sorted, drop a subset of all; nil when
// nothing is left.
func without(all, drop []netip.Addr) []netip.Addr {
	if len(all) == len(drop) {
		return nil
	}
	out := make([]netip.Addr, 0, len(all)-len(drop))
	j := 0
	for _, x := range all {
		for j < len(drop) && drop[j].Less(x) {
			j++
		}
		if j < len(drop) && drop[j] == x {
			continue
		}
		out = append(out, x)
	}
	return out
}

// sortAddrs sorts and removes duplicates in place.
func sortAddrs(a []netip.Addr) []netip.Addr {
	slices.SortFunc(a, netip.Addr.Compare)
	return slices.Clip(slices.Compact(a))
}

// guests lists the tasks s runs, in plan order, with their environment.
func (c *compiler) guests(s *server) []Guest {
	idx := slices.Clone(s.guestIdx)
	slices.SortFunc(idx, func(x, y int32) int {
		tx, ty := &c.tasks[x], &c.tasks[y]
		return cmp.Or(strings.Compare(tx.app.name, ty.app.name), strings.Compare(tx.class.name, ty.class.name),
			cmp.Compare(tx.index, ty.index))
	})
	out := make([]Guest, len(idx))
	for i, ti := range idx {
		t := &c.tasks[ti]
		cl := t.class
		sp := cl.spec.Guest
		sp.Command = slices.Clone(sp.Command)
		sp.Env = maps.Clone(sp.Env)
		env := make(map[string]string, len(sp.Env)+6+len(cl.out))
		maps.Copy(env, sp.Env)
		env[spec.EnvApp] = t.app.name
		env[spec.EnvClass] = cl.name
		env[spec.EnvTask] = t.id
		env[spec.EnvIndex] = strconv.Itoa(t.index)
		env[spec.EnvAddr] = t.addr.String()
		for _, v := range c.peersEnv(t.app, cl) {
			env[v.key] = v.value
		}
		out[i] = Guest{Task: t.id, App: t.app.name, Class: cl.name, Index: t.index, Address: t.addr,
			HostIf: HostIf(t.id), Spec: sp, Resources: cl.spec.Resources, Env: env}
	}
	return out
}

// peersEnv is, for each class cl has rules to, the variable listing every
// "addr:port" of that class's tasks on the rules' ports (the class's own
// tasks too, for a self-rule: cluster members usually want the full list).
func (c *compiler) peersEnv(a *app, cl *class) []envVar {
	if cl.peersEnv != nil || len(cl.out) == 0 {
		return cl.peersEnv
	}
	for i := 0; i < len(cl.out); {
		to := a.rules[cl.out[i]].to
		var ports []int
		j := i
		for ; j < len(cl.out) && a.rules[cl.out[j]].to == to; j++ {
			ports = append(ports, a.rules[cl.out[j]].ports...)
		}
		slices.Sort(ports)
		ports = slices.Compact(ports)
		var b strings.Builder
		for _, ad := range to.addrs {
			for _, p := range ports {
				if b.Len() > 0 {
					b.WriteByte(',')
				}
				b.WriteString(netip.AddrPortFrom(ad, uint16(p)).String())
			}
		}
		cl.peersEnv = append(cl.peersEnv, envVar{to.envName, b.String()})
		i = j
	}
	return cl.peersEnv
}
