package compile

import (
	"net/netip"
	"slices"
)

// group records each class's task addresses, sorted, once placement and
// addresses are final and the pending tasks set aside. An app whose cache
// entry is the last compile's, unchanged, takes the entry's lists: its
// fingerprint covers every task's address, pending ones too. With memo a
// new entry keeps this compile's.
func (c *compiler) group(memo bool) {
	for _, a := range c.apps {
		if memo && a.entry.addrs != nil {
			for _, cl := range a.classes {
				cl.addrs = a.entry.addrs[cl.name]
			}
			continue
		}
		for _, cl := range a.classes {
			// Pending tasks (set aside) have addresses too, in the
			// firewall rules and the peers' environment.
			cl.addrs = make([]netip.Addr, len(cl.tasks), len(cl.tasks)+len(a.pending))
			for i, ti := range cl.tasks {
				cl.addrs[i] = c.tasks[ti].addr
			}
			for _, ti := range a.pending {
				if t := &c.tasks[ti]; t.class == cl {
					cl.addrs = append(cl.addrs, t.addr)
				}
			}
			cl.addrs = slices.Clip(cl.addrs)
			slices.SortFunc(cl.addrs, netip.Addr.Compare)
		}
		if memo {
			a.entry.addrs = make(map[string][]netip.Addr, len(a.classes))
			for _, cl := range a.classes {
				a.entry.addrs[cl.name] = cl.addrs
			}
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

// planTasks lists the tasks by app, class name and index. An app whose
// tasks are, one by one, those of its list in old (the last plan's, by
// app name; nil without a cache) keeps that list, so that an unchanged app
// allocates nothing.
func (c *compiler) planTasks(old map[string][]Task) TaskList {
	l := TaskList{apps: make([][]Task, 0, len(c.apps))}
	for _, a := range c.apps {
		if prev := old[a.name]; len(prev) == len(a.tasks) && c.sameTasks(a, prev) {
			l.add(prev)
			continue
		}
		out := make([]Task, len(a.tasks))
		for i, ti := range a.tasks {
			out[i] = c.planTask(a, ti)
		}
		l.add(out)
	}
	return l
}

// planTask is task ti of app a as the plan shows it.
func (c *compiler) planTask(a *app, ti int32) Task {
	t := &c.tasks[ti]
	return Task{ID: t.id, App: a.name, Class: t.class.name, Index: t.index,
		Server: c.servers[t.server].spec.Name, Address: t.addr, Reason: t.reason}
}

// sameTasks says whether prev is the list planTasks would make for app a.
func (c *compiler) sameTasks(a *app, prev []Task) bool {
	for i, ti := range a.tasks {
		if t := c.planTask(a, ti); !t.equal(&prev[i]) {
			return false
		}
	}
	return true
}

// paths gives each app its paths: not the paths themselves (one per rule
// and pair of distinct tasks, half a million in a large fleet) but what
// they are derived from (pathGen), in the order of the tasks (app, class
// name, index) and then of the destination and the protocol. An app whose
// cache entry already holds its paths hands them over as they are.
func (c *compiler) paths() Paths {
	ps := Paths{apps: make([]AppPaths, 0, len(c.apps))}
	var ptasks map[*class][]pathTask
	for _, a := range c.apps {
		e := a.entry
		if !e.done {
			if ptasks == nil {
				ptasks = map[*class][]pathTask{}
			}
			e.paths, e.done = c.pathGen(a, ptasks), true
		}
		ps.addGen(e.paths)
	}
	return ps
}

// pathGen captures what app a's paths are derived from. tasks memoises
// each class's pathTasks, shared by every app's targets in this compile.
func (c *compiler) pathGen(a *app, tasks map[*class][]pathTask) *pathGen {
	ptasks := func(cl *class) []pathTask {
		if pt, ok := tasks[cl]; ok {
			return pt
		}
		pt := make([]pathTask, len(cl.tasks))
		for i, ti := range cl.tasks {
			t := &c.tasks[ti]
			pt[i] = pathTask{id: t.id, server: c.servers[t.server].spec.Name, addr: t.addr}
		}
		tasks[cl] = pt
		return pt
	}
	g := &pathGen{app: a.name}
	for _, cl := range a.byName {
		if len(cl.tasks) == 0 {
			continue
		}
		var targets []pathTarget
		rules := cl.out // sorted by (to class name, protocol)
		for i := 0; i < len(rules); {
			to := a.rules[rules[i]].to
			j := i
			tg := pathTarget{class: to.name, tasks: ptasks(to)}
			for ; j < len(rules) && a.rules[rules[j]].to == to; j++ {
				r := &a.rules[rules[j]]
				tg.rules = append(tg.rules, pathRule{protocol: r.protocol, ports: r.ports, encrypt: r.encrypt, self: to == cl})
			}
			targets = append(targets, tg)
			i = j
		}
		targets = c.linkTargets(targets, a, cl, ptasks)
		n := 0
		for _, tg := range targets {
			for _, r := range tg.rules {
				m := len(tg.tasks)
				if r.self {
					m--
				}
				n += m
			}
		}
		if n == 0 {
			continue
		}
		g.sources = append(g.sources, pathSource{class: cl.name, tasks: ptasks(cl), targets: targets})
		g.n += n * len(cl.tasks)
	}
	return g
}
