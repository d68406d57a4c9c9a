package verify

import (
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// crossLink is a rule of one app to a service another exports, resolved
// from the specs (not from the compiler's paths): fromApp's class
// fromClass may open connections to toApp's class toClass on ports.
type crossLink struct {
	fromApp, fromClass, toApp, toClass, proto string
	ports                                     map[int]bool
	encrypt                                   bool
}

// crossLinks resolves every app's rules to imported services: the
// exported ports the rules name, on the exported protocol. Rules whose
// service is gone give nothing: their traffic must be denied.
func crossLinks(apps []spec.App) []crossLink {
	byName := map[string]*spec.App{}
	for i := range apps {
		byName[apps[i].Name] = &apps[i]
	}
	var out []crossLink
	for i := range apps {
		a := &apps[i]
		classes := map[string]bool{}
		for _, c := range a.Classes {
			classes[c.Name] = true
		}
		for _, r := range a.Rules {
			im := a.ImportOf(r.To)
			if im == nil || classes[r.To] {
				continue
			}
			oname, svc, err := spec.ParseService(im.Service)
			other := byName[oname]
			if err != nil || other == nil || oname == a.Name {
				continue
			}
			e := other.Export(svc)
			if e == nil || protoOf(e.Protocol) != protoOf(r.Protocol) {
				continue
			}
			l := crossLink{fromApp: a.Name, fromClass: r.From, toApp: oname, toClass: e.Class, proto: protoOf(r.Protocol),
				ports: map[int]bool{}, encrypt: r.Encrypt}
			for _, p := range r.Ports {
				for _, q := range e.Ports {
					if p == q {
						l.ports[p] = true
					}
				}
			}
			if len(l.ports) > 0 {
				out = append(out, l)
			}
		}
	}
	return out
}

// across answers whether a task of fromApp/fromClass may open a
// connection to one of toApp/toClass on proto/port, and encrypted or not.
type across []crossLink

func (ls across) allowed(fromApp, fromClass, toApp, toClass, proto string, port int) (ok, encrypt bool) {
	for _, l := range ls {
		if l.fromApp == fromApp && l.fromClass == fromClass && l.toApp == toApp && l.toClass == toClass && l.proto == proto && l.ports[port] {
			return true, l.encrypt
		}
	}
	return false, false
}

// expect is what a check from src to dst should observe.
func expect(ok, encrypt bool, src, dst compile.Task) string {
	switch {
	case !ok:
		return Denied
	case src.Server == dst.Server:
		return Local
	case encrypt:
		return Encrypted
	}
	return Plain
}

// crossChecks prove app's links with other apps, either way: from every
// task of the importing class to every task of the exporting class, on
// every port the link opens (connects, encrypted or plain as the rule
// says), on the exporting class's other ports and exports (denied) and on
// one port nothing names (denied); from one task of each other class of
// the importer, and of each other class of the exporter, to the exporting
// class on the link's ports, and from the importing class to one task of
// each other class of the exporter (denied); and, for an importer, from the
// classes of its rules to imported services to one task of each class of
// the service's app on the rules' ports: denied where no link opens them
// (a withdrawn export, an unexported port).
func crossChecks(app string, apps []spec.App, byApp map[string][]compile.Task, links across) []Check {
	classPorts := func(a, class string) map[string]map[int]bool {
		out := map[string]map[int]bool{}
		add := func(proto string, p int) {
			if out[proto] == nil {
				out[proto] = map[int]bool{}
			}
			out[proto][p] = true
		}
		for i := range apps {
			if apps[i].Name != a {
				continue
			}
			for _, c := range apps[i].Classes {
				if c.Name == class {
					for _, p := range c.Ports {
						add(protoOf(p.Protocol), p.Port)
					}
				}
			}
			for _, e := range apps[i].Exports {
				if e.Class == class {
					for _, p := range e.Ports {
						add(protoOf(e.Protocol), p)
					}
				}
			}
		}
		return out
	}
	tasksOf := func(a, class string) []compile.Task {
		var out []compile.Task
		for _, t := range byApp[a] {
			if t.Class == class {
				out = append(out, t)
			}
		}
		return out
	}
	// one is the first task of each class of a but skip.
	one := func(a, skip string) []compile.Task {
		seen := map[string]bool{skip: true}
		var out []compile.Task
		for _, t := range byApp[a] { // sorted by ID
			if !seen[t.Class] {
				seen[t.Class] = true
				out = append(out, t)
			}
		}
		return out
	}
	var checks []Check
	add := func(src, dst compile.Task, proto string, port int) {
		c := newCheck(app, src.App, src, dst, proto, port)
		ok, enc := links.allowed(src.App, src.Class, dst.App, dst.Class, proto, port)
		c.Expect = expect(ok, enc, src, dst)
		checks = append(checks, c)
	}
	for _, l := range links {
		if l.fromApp != app && l.toApp != app {
			continue
		}
		dsts := tasksOf(l.toApp, l.toClass)
		ports := classPorts(l.toApp, l.toClass)
		if ports[l.proto] == nil {
			ports[l.proto] = map[int]bool{}
		}
		for p := range l.ports {
			ports[l.proto][p] = true
		}
		for _, src := range tasksOf(l.fromApp, l.fromClass) {
			for _, dst := range dsts {
				for _, proto := range sortedKeys(ports) {
					probe := sortedInts(ports[proto])
					if proto == l.proto {
						probe = append(probe, unusedPort(ports[proto]))
					}
					for _, port := range probe {
						add(src, dst, proto, port)
					}
				}
			}
		}
		strangers := append(one(l.fromApp, l.fromClass), one(l.toApp, l.toClass)...)
		for _, src := range strangers {
			for _, dst := range dsts {
				for _, port := range sortedInts(l.ports) {
					add(src, dst, l.proto, port)
				}
			}
		}
		for _, src := range tasksOf(l.fromApp, l.fromClass) {
			for _, dst := range one(l.toApp, l.toClass) {
				for _, port := range sortedInts(l.ports) {
					add(src, dst, l.proto, port)
				}
			}
		}
	}
	// The importer's rules to services of an app that runs, on their
	// ports, to one task of each of its classes: what no link opens (an
	// export withdrawn, a port no longer exported) must be denied.
	for i := range apps {
		a := &apps[i]
		if a.Name != app {
			continue
		}
		for _, r := range a.Rules {
			im := a.ImportOf(r.To)
			if im == nil {
				continue
			}
			oname, _, err := spec.ParseService(im.Service)
			if err != nil || oname == app {
				continue
			}
			for _, dst := range one(oname, "") {
				for _, src := range tasksOf(app, r.From) {
					for _, port := range r.Ports {
						add(src, dst, protoOf(r.Protocol), port)
					}
				}
			}
		}
	}
	return checks
}

// dedupe keeps the first check of each (source task, destination,
// protocol, port).
func dedupe(cs []Check) []Check {
	type key struct {
		from, to, addr, proto string
		port                  int
	}
	seen := map[key]bool{}
	out := cs[:0]
	for _, c := range cs {
		k := key{c.FromTask, c.ToTask, c.ToAddr, c.Protocol, c.Port}
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, c)
	}
	return out
}
