package compile

import (
	"net/netip"
	"slices"
)

// group records each class's task addresses, sorted, once placement and
// addresses are final.
func (c *compiler) group() {
	for _, a := range c.apps {
		for _, cl := range a.classes {
			cl.addrs = make([]netip.Addr, len(cl.tasks))
			for i, ti := range cl.tasks {
				cl.addrs[i] = c.tasks[ti].addr
			}
			slices.SortFunc(cl.addrs, netip.Addr.Compare)
		}
	}
}

func (c *compiler) networks() []AppNetwork {
	out := make([]AppNetwork, len(c.apps))
	for i, a := range c.apps {
		out[i] = AppNetwork{App: a.name, Network: a.network}
	}
	return out
}

// planTasks lists the tasks by app, class name and index.
func (c *compiler) planTasks() []Task {
	out := make([]Task, 0, len(c.tasks))
	for _, a := range c.apps {
		for _, ti := range a.tasks {
			t := &c.tasks[ti]
			out = append(out, Task{ID: t.id, App: a.name, Class: t.class.name, Index: t.index,
				Server: c.servers[t.server].spec.Name, Address: t.addr, Reason: t.reason})
		}
	}
	return out
}

// paths lists one Path per rule and pair of distinct tasks, in the order
// of the tasks (app, class name, index) and then of the protocol. They come
// out sorted by construction: sorting half a million paths would cost more
// than making them. An app whose cache entry already holds its paths
// hands them over as they are, shared, not copied.
func (c *compiler) paths() Paths {
	ps := Paths{apps: make([]AppPaths, 0, len(c.apps))}
	for _, a := range c.apps {
		e := a.entry
		if !e.done {
			n := 0
			for _, r := range a.rules {
				n += len(r.from.tasks) * len(r.to.tasks)
				if r.from == r.to {
					n -= len(r.from.tasks)
				}
			}
			for _, li := range a.links {
				n += len(c.links[li].from.tasks) * len(c.links[li].to.tasks)
			}
			out := c.appPaths(make([]Path, 0, n), a)
			e.paths, e.done = out[:len(out):len(out)], true
		}
		ps.add(a.name, e.paths)
	}
	return ps
}

// appPaths appends app a's paths to out.
func (c *compiler) appPaths(out []Path, a *app) []Path {
	for _, fi := range a.tasks {
		f := &c.tasks[fi]
		start := len(out)
		rules := f.class.out // sorted by (to class name, protocol)
		for i := 0; i < len(rules); {
			to := a.rules[rules[i]].to
			j := i
			for j < len(rules) && a.rules[rules[j]].to == to {
				j++
			}
			for _, ti := range to.tasks {
				if ti == fi {
					continue
				}
				t := &c.tasks[ti]
				for _, ri := range rules[i:j] {
					r := &a.rules[ri]
					out = append(out, Path{
						App: a.name, From: f.id, To: t.id, FromClass: f.class.name, ToClass: to.name,
						FromServer: c.servers[f.server].spec.Name, ToServer: c.servers[t.server].spec.Name,
						FromAddr: f.addr, ToAddr: t.addr, Protocol: r.protocol, Ports: r.ports,
						Encrypt: r.encrypt, Local: f.server == t.server,
					})
				}
			}
			i = j
		}
		if n := len(out); len(a.links) > 0 {
			if out = c.linkPaths(out, a, f); len(out) > n {
				sortByDest(out[start:])
			}
		}
	}
	return out
}
