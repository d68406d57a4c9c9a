package spec

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Error is one problem found in a spec. File, Line and Column are zero when
// the spec did not come from a file (an App received as JSON).
type Error struct {
	File   string
	Line   int
	Column int
	// Field is the path of the field at fault, such as "classes[1].tasks"
	// or "rules[0].ports[2]"; empty for problems with the file itself.
	Field string
	Msg   string
}

// Error prints "file:line:col: field: message", leaving out what is unknown.
func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File)
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d", e.Line)
	}
	if e.Line > 0 && e.Column > 0 {
		fmt.Fprintf(&b, ":%d", e.Column)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found in one decode or validation, sorted by
// file and position. DecodeApps and DecodeServers return one as their error;
// get it back with AsErrorList or errors.As.
type ErrorList []*Error

// Error prints one problem per line.
func (l ErrorList) Error() string {
	switch len(l) {
	case 0:
		return "no errors"
	case 1:
		return l[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d errors:", len(l))
	for _, e := range l {
		b.WriteString("\n")
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap lets errors.As and errors.Is see each problem.
func (l ErrorList) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// Err is nil for an empty list, so that a function can return list.Err()
// without handing back a non-nil error holding nothing.
func (l ErrorList) Err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}

// AsErrorList gets the ErrorList out of an error returned by this package,
// even when a caller wrapped it with %w.
func AsErrorList(err error) (ErrorList, bool) {
	var l ErrorList
	if errors.As(err, &l) {
		return l, true
	}
	return nil, false
}

func (l ErrorList) sort() {
	sort.SliceStable(l, func(i, j int) bool {
		a, b := l[i], l[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

// Pos is a place in a YAML file.
type Pos struct{ Line, Column int }

// where ties a decoded document to its file: the position of every field
// path seen while decoding, and the paths that already failed to decode
// (validation does not pile a second complaint on them).
type where struct {
	file string
	pos  map[string]Pos
	bad  map[string]bool
	errs *ErrorList
}

func newWhere(file string, errs *ErrorList) *where {
	return &where{file: file, pos: map[string]Pos{}, bad: map[string]bool{}, errs: errs}
}

// at finds the position of path, or of its nearest ancestor that has one:
// a missing field is reported where its parent is.
func (w *where) at(path string) Pos {
	for {
		if p, ok := w.pos[path]; ok {
			return p
		}
		if path == "" {
			return Pos{}
		}
		path = parentPath(path)
	}
}

// line is the line of path, for messages that point at a second place.
func (w *where) line(path string) int { return w.at(path).Line }

// errorf records a problem with the field at path, unless that field (or
// one holding it) already failed to decode.
func (w *where) errorf(path, format string, args ...any) {
	for p := path; ; p = parentPath(p) {
		if w.bad[p] {
			return
		}
		if p == "" {
			break
		}
	}
	w.add(w.at(path), path, fmt.Sprintf(format, args...))
}

func (w *where) add(p Pos, path, msg string) {
	*w.errs = append(*w.errs, &Error{File: w.file, Line: p.Line, Column: p.Column, Field: path, Msg: msg})
}

// ref names another field for a message: "rules[0] (line 12)", or just
// "rules[0]" when there are no lines.
func (w *where) ref(path string) string {
	if l := w.line(path); l > 0 {
		return path + " (line " + strconv.Itoa(l) + ")"
	}
	return path
}

// parentPath drops the last element of a field path:
// "classes[1].tasks" -> "classes[1]" -> "classes" -> "".
func parentPath(path string) string {
	if strings.HasSuffix(path, `"]`) {
		// A quoted map key: its escaped text holds no bare `["`.
		if i := strings.LastIndex(path, `["`); i >= 0 {
			return path[:i]
		}
	}
	if strings.HasSuffix(path, "]") {
		if i := strings.LastIndex(path, "["); i >= 0 {
			return path[:i]
		}
	}
	if i := strings.LastIndex(path, "."); i >= 0 {
		return path[:i]
	}
	return ""
}

func joinPath(parent, field string) string {
	if parent == "" {
		return field
	}
	return parent + "." + field
}

func indexPath(parent string, i int) string {
	return parent + "[" + strconv.Itoa(i) + "]"
}

// keyPath names a map entry: "env.HOME", or env["two words"] when the key
// would not read as one path element.
func keyPath(parent, key string) string {
	plain := key != ""
	for _, r := range key {
		if !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			plain = false
			break
		}
	}
	if plain {
		return joinPath(parent, key)
	}
	return parent + "[" + strconv.Quote(key) + "]"
}
