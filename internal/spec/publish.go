package spec

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// Publish makes a class port reachable from clients outside Corridor
// (ingress): connections from the client CIDRs From to Port (of
// Protocol) on the entry hosts' published address go to port To of one of
// the class's running tasks, on any server, chosen by a hash of the
// client's address and port. From the entry host to the task's host the
// connection takes the encrypted (WireGuard) or the plain (VXLAN) path as
// Encrypt says; Encrypt is true when left out.
type Publish struct {
	Port     int       `yaml:"port" json:"port"`
	To       int       `yaml:"to,omitempty" json:"to,omitempty"`             // default Port
	Protocol string    `yaml:"protocol,omitempty" json:"protocol,omitempty"` // default tcp
	On       PublishOn `yaml:"on,omitempty" json:"on,omitzero"`
	From     []string  `yaml:"from" json:"from"`
	Encrypt  *bool     `yaml:"encrypt,omitempty" json:"encrypt,omitempty"` // default true
}

// PublishOn says where a port is published: on the servers carrying all
// of Labels (every server when empty), at each one's underlay address, or
// at Address, a virtual address the operator routes to those servers.
type PublishOn struct {
	Labels  map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	Address string            `yaml:"address,omitempty" json:"address,omitempty"`
}

// Limits of publish.
const (
	MaxPublish     = 16  // published ports of one class
	MaxPublishFrom = 100 // client CIDRs of one published port
)

// ToPort is the class port p leads to: To, or Port when To is left out.
func (p Publish) ToPort() int {
	if p.To == 0 {
		return p.Port
	}
	return p.To
}

// Encrypted is p's encrypt, true when left out.
func (p Publish) Encrypted() bool { return p.Encrypt == nil || *p.Encrypt }

// Clients is the parsed client CIDRs of p, skipping unparsable ones
// (validation reports them).
func (p Publish) Clients() []netip.Prefix {
	var out []netip.Prefix
	for _, f := range p.From {
		if c, err := ParseOutside(strings.TrimSpace(f)); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// VirtualAddress is On.Address parsed; invalid when left out (the entry
// hosts' underlay addresses are published).
func (p Publish) VirtualAddress() netip.Addr {
	a, err := netip.ParseAddr(p.On.Address)
	if err != nil {
		return netip.Addr{}
	}
	return a
}

func setPublishDefaults(a *App) {
	for i := range a.Classes {
		for j := range a.Classes[i].Publish {
			p := &a.Classes[i].Publish[j]
			p.Protocol = Protocol(p.Protocol)
			if p.Encrypt == nil {
				t := true
				p.Encrypt = &t
			}
		}
	}
}

func validatePublish(w *where, a *App) {
	var own []netip.Prefix
	if p, err := netip.ParsePrefix(a.Network); err == nil {
		own = append(own, p.Masked())
	}
	for i := range a.Classes {
		c := &a.Classes[i]
		cp := indexPath("classes", i)
		if len(c.Publish) > MaxPublish {
			w.errorf(cp+".publish", "a class publishes at most %d ports, got %d", MaxPublish, len(c.Publish))
		}
		first := ""
		for j, p := range c.Publish {
			pp := indexPath(cp+".publish", j)
			proto, protoOK := checkProtocol(w, pp+".protocol", p.Protocol)
			if p.Port < 1 || p.Port > 65535 {
				w.errorf(pp+".port", "port must be between 1 and 65535, got %d", p.Port)
			}
			if p.To < 0 || p.To > 65535 {
				w.errorf(pp+".to", "to must be a class port between 1 and 65535 (or left out for port), got %d", p.To)
			} else if protoOK && p.ToPort() >= 1 && p.ToPort() <= 65535 && len(c.Ports) > 0 && !slices.ContainsFunc(c.Ports, func(cp Port) bool {
				return cp.Port == p.ToPort() && Protocol(cp.Protocol) == proto
			}) {
				w.errorf(pp+".to", "class %s serves no port %d/%s (its ports: %s): publish a port the class lists", c.Name, p.ToPort(), proto, portList(c.Ports))
			}
			switch {
			case len(p.From) == 0:
				w.errorf(pp+".from", "at least one client CIDR is required: the IPv4 addresses or CIDRs clients connect from")
			case len(p.From) > MaxPublishFrom:
				w.errorf(pp+".from", "at most %d client CIDRs, got %d", MaxPublishFrom, len(p.From))
			}
			seen := map[netip.Prefix]string{}
			for k, f := range p.From {
				fp := indexPath(pp+".from", k)
				pre, err := ParseOutside(f)
				if err != nil {
					w.errorf(fp, "%v", err)
					continue
				}
				if why := OutsideConflict(pre, own, nil); why != "" {
					w.errorf(fp, "client CIDR %s %s: clients are outside Corridor: name their networks (ranges around the overlay and the reserved ranges for every public client)", pre, why)
					continue
				}
				if prev, dup := seen[pre]; dup {
					w.errorf(fp, "client CIDR %s is listed twice (also %s)", pre, w.ref(prev))
				}
				seen[pre] = fp
			}
			if p.On.Address != "" {
				ad, err := netip.ParseAddr(p.On.Address)
				switch {
				case err != nil || !ad.Is4():
					w.errorf(pp+".on.address", "address %q is not an IPv4 address", truncate(p.On.Address))
				default:
					if why := OutsideConflict(netip.PrefixFrom(ad, 32), own, nil); why != "" {
						w.errorf(pp+".on.address", "address %s %s: a published address is one clients reach, outside the overlay", ad, why)
					}
				}
			}
			checkLabels(w, pp+".on.labels", p.On.Labels)
			// One decision for the (clients, class) pair, as for a pair
			// of classes: the class's tasks see the entry hosts' legs
			// either all encrypted or all plain.
			if j == 0 {
				first = pp
			} else if p.Encrypted() != c.Publish[0].Encrypted() {
				w.errorf(pp+".encrypt", "encrypt: %t conflicts with encrypt: %t of %s: the published ports of one class are either all encrypted or all plain between entry host and task",
					p.Encrypted(), c.Publish[0].Encrypted(), w.ref(first))
			}
		}
	}
}

func portList(ports []Port) string {
	var s []string
	for _, p := range ports {
		s = append(s, fmt.Sprintf("%d/%s", p.Port, Protocol(p.Protocol)))
	}
	return strings.Join(s, ", ")
}

// PublishKey is where a published port listens, as far as the spec alone
// says: a virtual address, or the underlay addresses of the servers with
// labels (every server when none).
type publishKey struct {
	proto  string
	port   int
	addr   string // virtual address, or "" for the underlay
	labels string // canonical labels, with addr ""
}

func keyOf(p Publish) publishKey {
	k := publishKey{proto: Protocol(p.Protocol), port: p.Port, addr: p.On.Address}
	if k.addr == "" {
		for _, l := range slices.Sorted(maps.Keys(p.On.Labels)) {
			k.labels += l + "=" + p.On.Labels[l] + ","
		}
	}
	return k
}

// PublishClash says whether two published ports may listen on the same
// address and port as far as their specs tell: the same virtual address,
// or both on underlay addresses where one takes every server or both take
// the same labels. Two label sets that differ may still meet on a server
// carrying both: the compiler refuses that against the real servers.
func publishClash(x, y publishKey) bool {
	if x.proto != y.proto || x.port != y.port || x.addr != y.addr {
		return false
	}
	return x.addr != "" || x.labels == "" || y.labels == "" || x.labels == y.labels
}

// validatePublishAcross refuses two published ports, of one app or of two,
// that listen on the same address and port.
func validatePublishAcross(apps []App, wheres []*where) {
	type at struct {
		app, class int
		k          publishKey
		path       string
	}
	var seen []at
	for i, a := range apps {
		for ci, c := range a.Classes {
			for j, p := range c.Publish {
				if p.Port < 1 || p.Port > 65535 {
					continue
				}
				path := indexPath(indexPath("classes", ci)+".publish", j)
				k := keyOf(p)
				for _, s := range seen {
					if !publishClash(s.k, k) {
						continue
					}
					where := fmt.Sprintf("class %s", apps[s.app].Classes[s.class].Name)
					if s.app != i {
						where = fmt.Sprintf("app %q %s (%s)", apps[s.app].Name, where, wheres[s.app].ref(s.path))
					} else {
						where += " (" + wheres[s.app].ref(s.path) + ")"
					}
					on := "the servers' underlay addresses"
					if k.addr != "" {
						on = "address " + k.addr
					}
					wheres[i].errorf(path+".port", "port %d/%s on %s is already published by %s: one address and port lead to one class",
						k.port, k.proto, on, where)
					break
				}
				seen = append(seen, at{i, ci, k, path})
			}
		}
	}
}
