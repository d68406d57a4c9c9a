package hoststate

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/corridor-dev/corridor/internal/spec"
)

// IngressClass is the FromClass of the firewall rule that lets the entry
// hosts' legs of a published port reach a class's tasks on their host.
// It is no valid class name, so it never meets a real class.
const IngressClass = "@ingress"

// MaxBackends bounds the backends of one ingress entry (the tasks of one
// class).
const MaxBackends = spec.MaxTasks

// IngressEntry is one published port (spec.Publish) on this host, its entry
// host: new connections from Clients to Address:Port (Protocol) go to
// ToPort of one of Backends, every running task of App/Class on any
// server. A backend on this host is reached directly, the client's
// address kept; one on another host by the encrypted or plain path, as
// its Encrypt says, with the source rewritten to Source, this host's
// address in the app's network, so that the reply comes back through
// this host.
type IngressEntry struct {
	App   string `json:"app"`
	Class string `json:"class"`
	// Network is the app's overlay network: Source and every backend
	// are task addresses in it.
	Network  netip.Prefix   `json:"network"`
	Address  netip.Addr     `json:"address"` // published: the underlay address or a virtual one
	Port     int            `json:"port"`
	Protocol string         `json:"protocol"`
	ToPort   int            `json:"toPort"`
	Clients  []netip.Prefix `json:"clients"`
	Encrypt  bool           `json:"encrypt"`
	Source   netip.Addr     `json:"source"`
	Backends []Backend      `json:"backends"` // by address
}

// Backend is one task behind a published port.
type Backend struct {
	Task    string     `json:"task"`
	Address netip.Addr `json:"address"`
	Server  string     `json:"server"`
	// Local: the task runs on this host. Encrypt: the leg to its host
	// is encrypted (never for a local one).
	Local   bool `json:"local,omitempty"`
	Encrypt bool `json:"encrypt,omitempty"`
}

// checkIngress checks State.Ingress: names, ports, clients outside the
// overlay and the host's address, Source and backends task addresses of
// the entry's network, local backends guests of its class here, remote
// ones reached by the path their Encrypt says (a peer's allowed IP or a
// VXLAN entry's guest of their server), and no two entries on one
// address and port.
func checkIngress(st State) error {
	if len(st.Ingress) == 0 {
		return nil
	}
	type owner struct{ app, class string }
	local := map[netip.Addr]owner{}
	var nets []netip.Prefix
	for _, g := range st.Guests {
		local[g.Address.Unmap()] = owner{g.App, g.Class}
		if g.Network.IsValid() {
			nets = append(nets, g.Network)
		}
	}
	enc := map[netip.Addr]string{}
	for _, p := range st.Peers {
		for _, a := range p.AllowedIPs {
			if m, err := UnmapPrefix(a); err == nil && m.Bits() == 32 {
				enc[m.Addr()] = p.Server
			}
		}
	}
	plain := map[netip.Addr]string{}
	for _, v := range st.VXLAN {
		for _, g := range v.Guests {
			plain[g.Unmap()] = v.Server
		}
	}
	type listen struct {
		a     netip.Addr
		proto string
		port  int
	}
	seen := map[listen]int{}
	for i, in := range st.Ingress {
		f := fmt.Sprintf("ingress[%d]", i)
		if err := checkName(f+".app", in.App); err != nil {
			return err
		}
		if err := checkName(f+".class", in.Class); err != nil {
			return err
		}
		switch in.Protocol {
		case spec.ProtoTCP, spec.ProtoUDP:
		default:
			return invalid(f+".protocol", "%q is neither %q nor %q", in.Protocol, spec.ProtoTCP, spec.ProtoUDP)
		}
		if in.Port < 1 || in.Port > 65535 {
			return invalid(f+".port", "%d is not a port", in.Port)
		}
		if in.ToPort < 1 || in.ToPort > 65535 {
			return invalid(f+".toPort", "%d is not a port", in.ToPort)
		}
		n := in.Network
		if !n.IsValid() || !n.Addr().Is4() || n != n.Masked() || n.Bits() > 30 {
			return invalid(f+".network", "%s is not an IPv4 network of at least 4 addresses", n)
		}
		taskAddr := func(a netip.Addr) bool {
			a = a.Unmap()
			return a.Is4() && n.Contains(a) && a != n.Addr() && a != lastAddr(n)
		}
		addr := in.Address.Unmap()
		if !addr.Is4() {
			return invalid(f+".address", "%s is not an IPv4 address", in.Address)
		}
		for _, g := range append(slices.Clone(nets), append(overlayGuard, n)...) {
			if g.Contains(addr) {
				return invalid(f+".address", "%s is in %s: a published address is never an overlay or reserved address", addr, g)
			}
		}
		k := listen{addr, in.Protocol, in.Port}
		if j, dup := seen[k]; dup {
			return invalid(f+".port", "%s:%d/%s is also published by ingress[%d]", addr, in.Port, in.Protocol, j)
		}
		seen[k] = i
		if len(in.Clients) == 0 {
			return invalid(f+".clients", "no client CIDR")
		}
		for j, c := range in.Clients {
			cf := fmt.Sprintf("%s.clients[%d]", f, j)
			if !c.IsValid() || !c.Addr().Is4() || c != c.Masked() {
				return invalid(cf, "%s is not a masked IPv4 prefix", c)
			}
			if c.Contains(st.Address.Unmap()) {
				return invalid(cf, "%s holds the host's own underlay address", c)
			}
			for _, g := range append(slices.Clone(nets), append(overlayGuard, n)...) {
				if g.Overlaps(c) {
					return invalid(cf, "%s overlaps %s: clients are never overlay or reserved addresses", c, g)
				}
			}
		}
		if !taskAddr(in.Source) {
			return invalid(f+".source", "%s is not a task address of network %s", in.Source, n)
		}
		if _, ok := local[in.Source.Unmap()]; ok {
			return invalid(f+".source", "%s is a local guest's address", in.Source)
		}
		if len(in.Backends) > MaxBackends {
			return invalid(f+".backends", "%d backends, more than %d", len(in.Backends), MaxBackends)
		}
		addrs := map[netip.Addr]bool{}
		for j, b := range in.Backends {
			bf := fmt.Sprintf("%s.backends[%d]", f, j)
			a := b.Address.Unmap()
			switch {
			case b.Task == "":
				return invalid(bf+".task", "missing task")
			case !taskAddr(a):
				return invalid(bf+".address", "%s is not a task address of network %s", a, n)
			case addrs[a] || a == in.Source.Unmap():
				return invalid(bf+".address", "%s is listed twice", a)
			}
			addrs[a] = true
			if b.Local {
				if o, ok := local[a]; !ok || o != (owner{in.App, in.Class}) {
					return invalid(bf+".address", "%s is not a guest of %s/%s on this host", a, in.App, in.Class)
				}
				if b.Encrypt {
					return invalid(bf+".encrypt", "a local backend has no leg to encrypt")
				}
				continue
			}
			if b.Encrypt != in.Encrypt {
				return invalid(bf+".encrypt", "%t, but the published port says %t", b.Encrypt, in.Encrypt)
			}
			// Fail closed: the leg's path must be there, or the entry is
			// refused rather than sent some other way.
			if b.Encrypt && enc[a] != b.Server {
				return invalid(bf+".address", "%s of server %q is no allowed IP of that server's WireGuard peer", a, b.Server)
			}
			if !b.Encrypt && plain[a] != b.Server {
				return invalid(bf+".address", "%s of server %q is not in that server's VXLAN entry", a, b.Server)
			}
		}
	}
	return nil
}

// checkIngressServers refuses a client CIDR that holds a server's
// underlay address.
func checkIngressServers(st State, servers []netip.Addr) error {
	for i, in := range st.Ingress {
		if err := holdsServer(fmt.Sprintf("ingress[%d].clients", i), in.Clients, servers); err != nil {
			return err
		}
	}
	return nil
}
