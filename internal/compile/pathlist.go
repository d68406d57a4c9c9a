package compile

import (
	"encoding/json"
	"iter"
	"net/netip"
	"strconv"

	"github.com/corridor-dev/corridor/internal/hoststate"
)

// Paths are a plan's paths, app by app in the plan's app order, each app's
// sorted. The compiler does not make them: a plan of 10,000 tasks has
// hundreds of thousands of paths (224 bytes each), more memory than every
// host's state together, and most of a compile's time went into writing
// them. Each app keeps instead what its paths are derived from (its tasks'
// IDs, servers and addresses per class, and its rules grouped per
// destination class), and All derives the paths one by one, in order, when
// they are read. Through a Cache an unchanged app's paths are handed over
// as they are. In JSON they are one flat list, as before.
type Paths struct {
	apps []AppPaths
	n    int
}

// AppPaths are one app's paths, sorted by (source task, destination task,
// protocol): derived on demand from the compiler's facts, or a decoded
// flat list (NewPaths, JSON). The zero value is an empty list; it is
// read-only once made.
type AppPaths struct {
	App  string
	gen  *pathGen
	flat []Path
}

// pathGen is what one app's paths are derived from, captured when the
// compile made them (nothing in it changes afterwards).
type pathGen struct {
	app     string
	sources []pathSource // classes with paths, in name order
	n       int
}

// pathTask is a task as its paths show it.
type pathTask struct {
	id, server string
	addr       netip.Addr
}

// pathSource is one source class: its tasks by index, and the
// destinations its rules and links reach, in path order.
type pathSource struct {
	class   string
	tasks   []pathTask
	targets []pathTarget
}

// pathTarget is one destination class (of this app, or of an imported
// service's app) and the rules from the source class to it, by protocol.
type pathTarget struct {
	toApp string // "" for the app's own classes
	class string
	tasks []pathTask
	rules []pathRule
}

// pathRule is one rule's (or link's) part of a path. self marks a rule
// from a class to itself, which gives no path from a task to itself.
type pathRule struct {
	protocol string
	ports    []int
	encrypt  bool
	self     bool
}

// NewPaths groups a flat, app-ordered list of paths by app. Apps with no
// path have no group, in Paths from the compiler too.
func NewPaths(flat []Path) Paths {
	var ps Paths
	for _, run := range byApp(flat, func(p *Path) string { return p.App }) {
		ps.apps = append(ps.apps, AppPaths{App: run[0].App, flat: run})
	}
	ps.n = len(flat)
	return ps
}

// byApp splits a flat, app-ordered list into its runs of one app each,
// each full (appending to one copies it).
func byApp[T any](flat []T, app func(*T) string) [][]T {
	var runs [][]T
	for i := 0; i < len(flat); {
		j := i + 1
		for j < len(flat) && app(&flat[j]) == app(&flat[i]) {
			j++
		}
		runs = append(runs, flat[i:j:j])
		i = j
	}
	return runs
}

// addGen appends one app's derived paths; an app without paths is left
// out.
func (ps *Paths) addGen(g *pathGen) {
	if g.n > 0 {
		ps.apps = append(ps.apps, AppPaths{App: g.app, gen: g})
		ps.n += g.n
	}
}

// Len is the number of paths.
func (ps Paths) Len() int { return ps.n }

// Apps are the paths app by app, in the plan's app order: shared, not
// copied, and so read-only.
func (ps Paths) Apps() []AppPaths { return ps.apps }

// All yields every path in order. Each path is made when it is yielded;
// its Ports are shared with the plan and must not be changed.
func (ps Paths) All() iter.Seq[Path] {
	return func(yield func(Path) bool) {
		for _, a := range ps.apps {
			if !a.each(yield) {
				return
			}
		}
	}
}

// Flat is every path in one new slice.
func (ps Paths) Flat() []Path {
	out := make([]Path, 0, ps.n)
	for p := range ps.All() {
		out = append(out, p)
	}
	return out
}

// MarshalJSON writes one flat list, as a []Path would be written.
func (ps Paths) MarshalJSON() ([]byte, error) {
	return marshalPaths(ps.n, ps.All())
}

// UnmarshalJSON reads a flat list (null is no paths).
func (ps *Paths) UnmarshalJSON(b []byte) error {
	var flat []Path
	if err := json.Unmarshal(b, &flat); err != nil {
		return err
	}
	*ps = NewPaths(flat)
	return nil
}

// Len is the number of the app's paths.
func (a AppPaths) Len() int {
	if a.gen != nil {
		return a.gen.n
	}
	return len(a.flat)
}

// All yields the app's paths in order, each made when it is yielded.
func (a AppPaths) All() iter.Seq[Path] {
	return func(yield func(Path) bool) { a.each(yield) }
}

// MarshalJSON writes the app's paths as one list ([] when there is none,
// as an empty []Path is written).
func (a AppPaths) MarshalJSON() ([]byte, error) {
	return marshalPaths(a.Len(), a.All())
}

// UnmarshalJSON reads a list of paths (null is none). The app is taken
// from the first path.
func (a *AppPaths) UnmarshalJSON(b []byte) error {
	var flat []Path
	if err := json.Unmarshal(b, &flat); err != nil {
		return err
	}
	*a = AppPaths{flat: flat}
	if len(flat) > 0 {
		a.App = flat[0].App
	}
	return nil
}

// each calls yield with every path in order, and reports whether it went
// to the end.
func (a AppPaths) each(yield func(Path) bool) bool {
	if a.gen == nil {
		for _, p := range a.flat {
			if !yield(p) {
				return false
			}
		}
		return true
	}
	g := a.gen
	for si := range g.sources {
		s := &g.sources[si]
		for i := range s.tasks {
			f := &s.tasks[i]
			for ti := range s.targets {
				tg := &s.targets[ti]
				for j := range tg.tasks {
					t := &tg.tasks[j]
					for ri := range tg.rules {
						r := &tg.rules[ri]
						if r.self && i == j {
							continue
						}
						p := Path{
							App: g.app, ToApp: tg.toApp, From: f.id, To: t.id, FromClass: s.class, ToClass: tg.class,
							FromServer: f.server, ToServer: t.server, FromAddr: f.addr, ToAddr: t.addr,
							Protocol: r.protocol, Ports: r.ports, Encrypt: r.encrypt, Local: f.server == t.server,
						}
						if !yield(p) {
							return false
						}
					}
				}
			}
		}
	}
	return true
}

// marshalPaths writes n paths as one JSON list.
func marshalPaths(n int, all iter.Seq[Path]) ([]byte, error) {
	return appendPaths(make([]byte, 0, 2+n*280), all), nil
}

// AppendJSON appends the app's paths as one JSON list to b: the bytes
// json.Marshal writes for them, without going through reflection and
// without the check json.Marshal makes of what a MarshalJSON returns
// (the server encodes every app's paths at each reconcile, hundreds of
// megabytes in a large fleet).
func (a AppPaths) AppendJSON(b []byte) []byte { return appendPaths(b, a.All()) }

func appendPaths(b []byte, all iter.Seq[Path]) []byte {
	b = append(b, '[')
	first := true
	for p := range all {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendPath(b, &p)
	}
	return append(b, ']')
}

// appendPath appends p as json.Marshal writes it (field order, omitempty,
// escaping): TestPathJSON compares the two.
func appendPath(b []byte, p *Path) []byte {
	b = append(b, `{"app":`...)
	b = hoststate.AppendString(b, p.App)
	if p.ToApp != "" {
		b = append(b, `,"toApp":`...)
		b = hoststate.AppendString(b, p.ToApp)
	}
	b = append(b, `,"from":`...)
	b = hoststate.AppendString(b, p.From)
	b = append(b, `,"to":`...)
	b = hoststate.AppendString(b, p.To)
	b = append(b, `,"fromClass":`...)
	b = hoststate.AppendString(b, p.FromClass)
	b = append(b, `,"toClass":`...)
	b = hoststate.AppendString(b, p.ToClass)
	b = append(b, `,"fromServer":`...)
	b = hoststate.AppendString(b, p.FromServer)
	b = append(b, `,"toServer":`...)
	b = hoststate.AppendString(b, p.ToServer)
	b = append(b, `,"fromAddr":`...)
	b = hoststate.AppendAddr(b, p.FromAddr)
	b = append(b, `,"toAddr":`...)
	b = hoststate.AppendAddr(b, p.ToAddr)
	b = append(b, `,"protocol":`...)
	b = hoststate.AppendString(b, p.Protocol)
	b = append(b, `,"ports":`...)
	if p.Ports == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, port := range p.Ports {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(port), 10)
		}
		b = append(b, ']')
	}
	b = append(b, `,"encrypt":`...)
	b = strconv.AppendBool(b, p.Encrypt)
	b = append(b, `,"local":`...)
	b = strconv.AppendBool(b, p.Local)
	return append(b, '}')
}
