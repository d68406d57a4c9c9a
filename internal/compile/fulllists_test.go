package compile

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// hostLists are one host's peers and VXLAN entries with their lists in
// full, as fullLists gives them.
type hostLists struct {
	peers []Peer
	vxlan []VXLANEntry
}

// fullLists is the reference for every host's peers and VXLAN entries with
// their lists written in full, computed from what a plan says outside its
// host states' peers, VXLAN entries and route groups, and without any of
// the code that builds host states: a host reaches a remote guest for
// every path between one of its own tasks and that guest (either way: a
// path's destination host reaches its source too, for the replies), and
// for every published port, an entry host reaches each remote backend and
// the backend's host reaches the entry host's source address. Encrypted,
// the guest is among the allowed IPs (a /32 or /128) of its server's
// WireGuard peer; in plain, among the guests of its server's VXLAN entry.
// Entries go by server name, lists by address, each address once; a
// server's entries show what in (its key, the next key of a rotation
// announced or committed) and its host state (address, WireGuard port)
// say of it. It fails t on a path or backend that names a server the plan
// has no host for, or a non-local one between two tasks on one server.
func fullLists(t *testing.T, in Input, p *Plan) map[string]hostLists {
	t.Helper()
	type reached struct{ enc, plain map[netip.Addr]bool }
	by := make(map[string]map[string]*reached, len(p.Hosts)) // host -> remote server -> guests
	hosts := make(map[string]*HostState, len(p.Hosts))
	for i := range p.Hosts {
		hosts[p.Hosts[i].Host] = &p.Hosts[i]
		by[p.Hosts[i].Host] = map[string]*reached{}
	}
	add := func(host, remote string, addr netip.Addr, enc bool) {
		if host == remote || by[host] == nil || hosts[remote] == nil {
			t.Fatalf("a path or backend between %s and %s (%s), which are not two hosts of the plan", host, remote, addr)
		}
		r := by[host][remote]
		if r == nil {
			r = &reached{enc: map[netip.Addr]bool{}, plain: map[netip.Addr]bool{}}
			by[host][remote] = r
		}
		if enc {
			r.enc[addr] = true
		} else {
			r.plain[addr] = true
		}
	}
	for path := range p.Paths.All() {
		if path.Local {
			continue
		}
		add(path.FromServer, path.ToServer, path.ToAddr, path.Encrypt)
		add(path.ToServer, path.FromServer, path.FromAddr, path.Encrypt)
	}
	for _, h := range p.Hosts {
		for _, e := range h.Ingress {
			for _, b := range e.Backends {
				if b.Local {
					continue
				}
				add(h.Host, b.Server, b.Address, b.Encrypt)
				add(b.Server, h.Host, e.Source, b.Encrypt)
			}
		}
	}
	servers := make(map[string]*spec.Server, len(in.Servers))
	for i := range in.Servers {
		servers[in.Servers[i].Name] = &in.Servers[i]
	}
	out := make(map[string]hostLists, len(by))
	for host, remotes := range by {
		names := slices.Sorted(maps.Keys(remotes))
		l := hostLists{peers: []Peer{}, vxlan: []VXLANEntry{}}
		for _, n := range names {
			r, rh, sp := remotes[n], hosts[n], servers[n]
			if len(r.enc) > 0 {
				var ips []netip.Prefix
				for _, a := range sortedSet(r.enc) {
					ips = append(ips, netip.PrefixFrom(a, a.BitLen()))
				}
				pe := Peer{Server: n, PublicKey: sp.PublicKey, Endpoint: netip.AddrPortFrom(rh.Address, uint16(rh.WireGuardPort)), AllowedIPs: ips}
				if ro := sp.Rotation; ro != nil && (ro.Phase == spec.RotationAnnounce || ro.Phase == spec.RotationCommit) {
					pe.NextPublicKey = ro.NextPublicKey
				}
				l.peers = append(l.peers, pe)
			}
			if len(r.plain) > 0 {
				l.vxlan = append(l.vxlan, VXLANEntry{Server: n, Underlay: rh.Address, MAC: VTEPMAC(rh.Address), Guests: sortedSet(r.plain)})
			}
		}
		out[host] = l
	}
	return out
}

// sortedSet is the addresses of set, sorted.
func sortedSet(set map[netip.Addr]bool) []netip.Addr {
	return slices.SortedFunc(maps.Keys(set), netip.Addr.Compare)
}
