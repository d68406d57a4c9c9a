package compile

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
)

// PathSet is an app's paths in the form they are made from: each class's
// tasks once, and for each source class the classes it reaches with the
// rules of each. It is how a placement record keeps them in etcd. Written
// out one by one, the paths of a rule between two classes of 500 tasks
// are 250,000 entries (62 MB of JSON, past any etcd request limit); as a
// PathSet they are the two classes' tasks and one rule. In the API and the
// CLI paths stay one flat list (AppPaths.MarshalJSON).
type PathSet struct {
	Paths AppPaths
}

// Compact reports whether a's paths have a PathSet form: those a compile
// made, not those read from a flat list.
func (a AppPaths) Compact() bool { return a.gen != nil }

type pathSetJSON struct {
	App     string           `json:"app"`
	N       int              `json:"n"`
	Classes []pathClassJSON  `json:"classes"`
	Sources []pathSourceJSON `json:"sources"`
}

type pathClassJSON struct {
	App   string      `json:"app,omitempty"` // "" for the app's own classes
	Class string      `json:"class"`
	Tasks [][3]string `json:"tasks"` // ID, server, address
}

type pathSourceJSON struct {
	Class   int              `json:"class"` // index into classes
	Targets []pathTargetJSON `json:"targets"`
}

type pathTargetJSON struct {
	Class int            `json:"class"`
	Rules []pathRuleJSON `json:"rules"`
}

type pathRuleJSON struct {
	Protocol string `json:"protocol"`
	Ports    []int  `json:"ports"`
	Encrypt  bool   `json:"encrypt,omitempty"`
	Self     bool   `json:"self,omitempty"`
}

// MarshalJSON writes the PathSet form; paths without one (Compact false)
// are refused.
func (s PathSet) MarshalJSON() ([]byte, error) {
	g := s.Paths.gen
	if g == nil {
		return nil, errors.New("compile: paths read from a flat list have no path-set form")
	}
	out := pathSetJSON{App: g.app, N: g.n, Classes: []pathClassJSON{}, Sources: []pathSourceJSON{}}
	type key struct{ app, class string }
	index := map[key]int{}
	class := func(app, name string, tasks []pathTask) int {
		k := key{app, name}
		if i, ok := index[k]; ok {
			return i
		}
		c := pathClassJSON{App: app, Class: name, Tasks: make([][3]string, len(tasks))}
		for i, t := range tasks {
			c.Tasks[i] = [3]string{t.id, t.server, t.addr.String()}
		}
		index[k] = len(out.Classes)
		out.Classes = append(out.Classes, c)
		return index[k]
	}
	for _, src := range g.sources {
		sj := pathSourceJSON{Class: class("", src.class, src.tasks), Targets: []pathTargetJSON{}}
		for _, tg := range src.targets {
			tj := pathTargetJSON{Class: class(tg.toApp, tg.class, tg.tasks), Rules: make([]pathRuleJSON, len(tg.rules))}
			for i, r := range tg.rules {
				tj.Rules[i] = pathRuleJSON{Protocol: r.protocol, Ports: r.ports, Encrypt: r.encrypt, Self: r.self}
			}
			sj.Targets = append(sj.Targets, tj)
		}
		out.Sources = append(out.Sources, sj)
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads the PathSet form, checking that it is whole: every
// class index in range, every address valid, and the count of paths the
// one it says.
func (s *PathSet) UnmarshalJSON(b []byte) error {
	var in pathSetJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	classes := make([][]pathTask, len(in.Classes))
	for i, c := range in.Classes {
		ts := make([]pathTask, len(c.Tasks))
		for j, t := range c.Tasks {
			addr, err := netip.ParseAddr(t[2])
			if err != nil {
				return fmt.Errorf("compile: path set of %s: class %s task %s: %w", in.App, c.Class, t[0], err)
			}
			ts[j] = pathTask{id: t[0], server: t[1], addr: addr}
		}
		classes[i] = ts
	}
	at := func(i int) error {
		if i < 0 || i >= len(classes) {
			return fmt.Errorf("compile: path set of %s: class %d of %d", in.App, i, len(classes))
		}
		return nil
	}
	g := &pathGen{app: in.App}
	n := 0
	for _, sj := range in.Sources {
		if err := at(sj.Class); err != nil {
			return err
		}
		src := pathSource{class: in.Classes[sj.Class].Class, tasks: classes[sj.Class]}
		for _, tj := range sj.Targets {
			if err := at(tj.Class); err != nil {
				return err
			}
			c := in.Classes[tj.Class]
			tg := pathTarget{toApp: c.App, class: c.Class, tasks: classes[tj.Class]}
			for _, r := range tj.Rules {
				tg.rules = append(tg.rules, pathRule{protocol: r.Protocol, ports: r.Ports, encrypt: r.Encrypt, self: r.Self})
				m := len(tg.tasks)
				if r.Self {
					m--
				}
				n += m * len(src.tasks)
			}
			src.targets = append(src.targets, tg)
		}
		g.sources = append(g.sources, src)
	}
	if n != in.N {
		return fmt.Errorf("compile: path set of %s makes %d paths, says %d", in.App, n, in.N)
	}
	g.n = n
	s.Paths = AppPaths{App: in.App, gen: g}
	return nil
}
