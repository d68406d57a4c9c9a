package compile

import (
	"bytes"
	"encoding/json"
	"iter"
)

// Paths are a plan's paths, app by app in the plan's app order, each app's
// sorted. They are kept per app so that a recompile through a Cache hands
// over an unchanged app's paths as they are: one flat list would have to
// be copied whole (hundreds of thousands of paths in a large fleet) after
// every change. In JSON they are one flat list.
type Paths struct {
	apps []AppPaths
	n    int
}

// AppPaths are one app's paths, sorted by (source task, destination task,
// protocol).
type AppPaths struct {
	App   string
	Paths []Path
}

// NewPaths groups a flat, app-ordered list of paths by app. Apps with no
// path have no group, in Paths from the compiler too.
func NewPaths(flat []Path) Paths {
	var ps Paths
	for i := 0; i < len(flat); {
		j := i + 1
		for j < len(flat) && flat[j].App == flat[i].App {
			j++
		}
		ps.apps = append(ps.apps, AppPaths{App: flat[i].App, Paths: flat[i:j:j]})
		i = j
	}
	ps.n = len(flat)
	return ps
}

// add appends one app's paths; an app without paths is left out.
func (ps *Paths) add(app string, paths []Path) {
	if len(paths) > 0 {
		ps.apps = append(ps.apps, AppPaths{App: app, Paths: paths})
		ps.n += len(paths)
	}
}

// Len is the number of paths.
func (ps Paths) Len() int { return ps.n }

// Apps are the paths app by app, in the plan's app order: shared, not
// copied, and so read-only.
func (ps Paths) Apps() []AppPaths { return ps.apps }

// All yields every path in order. The pointers are into the plan, which is
// read-only.
func (ps Paths) All() iter.Seq[*Path] {
	return func(yield func(*Path) bool) {
		for _, a := range ps.apps {
			for i := range a.Paths {
				if !yield(&a.Paths[i]) {
					return
				}
			}
		}
	}
}

// Flat is every path in one new slice.
func (ps Paths) Flat() []Path {
	out := make([]Path, 0, ps.n)
	for _, a := range ps.apps {
		out = append(out, a.Paths...)
	}
	return out
}

// MarshalJSON writes one flat list, as a []Path would be written.
func (ps Paths) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('[')
	first := true
	for p := range ps.All() {
		if !first {
			b.WriteByte(',')
		}
		first = false
		js, err := json.Marshal(p)
		if err != nil {
			return nil, err
		}
		b.Write(js)
	}
	b.WriteByte(']')
	return b.Bytes(), nil
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
