package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Limits on what DecodeApps and DecodeServers read. Input past them is
// refused before or while parsing, so that no file can make the decoder
// spend unbounded memory or time.
const (
	MaxFileSize  = 1 << 20 // bytes
	MaxDocuments = 100     // documents in one YAML stream
)

// DecodeApps reads a YAML stream of one or more `kind: App` documents
// (separated by ---), strictly: unknown fields, YAML aliases and anchors are
// errors. It fills in defaults (protocol tcp), validates each app and the
// apps together (ValidateApp, ValidateApps), and returns every problem found
// as an ErrorList whose entries name file, line, column and field.
func DecodeApps(file string, data []byte) ([]App, error) {
	apps, _, err := DecodeAppsLocated(file, data)
	return apps, err
}

// DecodeServers reads a YAML stream of one or more `kind: ServerList`
// documents, strictly, fills in defaults (state ready, wireguardPort
// 51820), validates the servers of all documents together and returns them
// in file order. Problems come back as an ErrorList.
func DecodeServers(file string, data []byte) ([]Server, error) {
	var errs ErrorList
	docs := parseStream(file, data, KindServers, &errs)
	var servers []Server
	var wheres []*where
	var paths []string
	for _, d := range docs {
		var l ServerList
		decodeValue(d.w, d.node, reflect.ValueOf(&l).Elem(), "")
		checkHeader(d.w, l.APIVersion, l.Kind, KindServers)
		if len(l.Servers) == 0 {
			d.w.errorf("servers", "at least one server is required")
		}
		for i := range l.Servers {
			SetServerDefaults(&l.Servers[i])
			servers = append(servers, l.Servers[i])
			wheres = append(wheres, d.w)
			paths = append(paths, indexPath("servers", i))
		}
	}
	validateServers(servers, wheres, paths)
	if len(errs) > 0 {
		errs.sort()
		return nil, errs
	}
	return servers, nil
}

// document is one parsed YAML document of the kind wanted.
type document struct {
	node *yaml.Node // the top-level mapping
	w    *where
}

// parseStream splits data into documents, keeping only those that are safe
// to decode: a mapping of the wanted kind, free of aliases and anchors.
func parseStream(file string, data []byte, kind string, errs *ErrorList) []document {
	fileErr := func(line int, msg string) {
		*errs = append(*errs, &Error{File: file, Line: line, Msg: msg})
	}
	if len(data) > MaxFileSize {
		fileErr(0, fmt.Sprintf("file is %d bytes, more than the limit of %d bytes (1 MiB)", len(data), MaxFileSize))
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []document
	seen := 0
	for {
		var root yaml.Node
		err := decodeNode(dec, &root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			line, msg := yamlErrorLine(err)
			fileErr(line, "invalid YAML: "+msg)
			return docs
		}
		seen++
		if seen > MaxDocuments {
			line := root.Line
			if len(root.Content) > 0 {
				line = root.Content[0].Line
			}
			fileErr(line, fmt.Sprintf("more than %d documents in one file", MaxDocuments))
			return docs
		}
		if len(root.Content) == 0 || isNull(root.Content[0]) {
			continue // "---" with nothing after it, as generators often leave
		}
		w := newWhere(file, errs)
		top := root.Content[0]
		w.pos[""] = nodePos(top) // where a missing top-level field is reported
		if !checkNodes(w, top) {
			continue
		}
		if top.Kind != yaml.MappingNode {
			w.add(nodePos(top), "", fmt.Sprintf("expected a mapping with apiVersion, kind and the %s fields, got %s", kind, describeNode(top)))
			continue
		}
		if k := mappingValue(top, "kind"); k == nil {
			w.add(nodePos(top), "kind", fmt.Sprintf("kind is required: this file must hold kind: %s documents", kind))
			continue
		} else if k.Kind != yaml.ScalarNode || k.Value != kind {
			w.add(nodePos(k), "kind", fmt.Sprintf("kind must be %s, got %s", kind, describeNode(k)))
			continue
		}
		docs = append(docs, document{node: top, w: w})
	}
	if seen == 0 || (len(docs) == 0 && len(*errs) == 0) {
		fileErr(0, fmt.Sprintf("file is empty: expected a kind: %s document", kind))
	}
	return docs
}

// decodeNode parses the next document. yaml.v3 has panicked on hostile
// input in the past; a panic here becomes an error rather than a crash of
// the server that was handed the file.
func decodeNode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: parser failed: %v", r)
		}
	}()
	return dec.Decode(n)
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlErrorLine takes the line out of a yaml.v3 parse error.
func yamlErrorLine(err error) (int, string) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		if line, convErr := strconv.Atoi(m[1]); convErr == nil {
			return line, m[2]
		}
	}
	return 0, strings.TrimPrefix(msg, "yaml: ")
}

// standardTags are the YAML tags a spec may carry, explicitly or not.
var standardTags = map[string]bool{
	"!!str": true, "!!int": true, "!!float": true, "!!bool": true, "!!null": true,
	"!!map": true, "!!seq": true, "!!timestamp": true, "!!binary": true, "!!merge": true,
}

// checkNodes walks the whole tree, without recursion so that deep nesting
// cannot exhaust the stack, and rejects aliases, anchors and custom tags.
// Rejecting aliases outright is what makes alias bombs harmless: no alias
// is ever expanded.
func checkNodes(w *where, top *yaml.Node) bool {
	ok := true
	stack := []*yaml.Node{top}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		switch {
		case n.Kind == yaml.AliasNode:
			w.add(nodePos(n), "", "YAML aliases are not allowed: write the value out in full")
			ok = false
			continue
		case n.Anchor != "":
			w.add(nodePos(n), "", fmt.Sprintf("YAML anchors are not allowed (&%s): YAML aliases are not allowed, so write values out in full", truncate(n.Anchor)))
			ok = false
		case !standardTags[n.ShortTag()]:
			w.add(nodePos(n), "", fmt.Sprintf("YAML tag %q is not allowed", truncate(n.Tag)))
			ok = false
		}
		stack = append(stack, n.Content...)
	}
	return ok
}

func nodePos(n *yaml.Node) Pos { return Pos{Line: n.Line, Column: n.Column} }

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// mappingValue is the value of key in mapping m, or nil.
func mappingValue(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if k := m.Content[i]; k.Kind == yaml.ScalarNode && k.Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// describeNode says what a node is, for "expected X, got Y" messages.
func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.DocumentNode:
		return "a document"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing (null)"
		case "!!str":
			return strconv.Quote(truncate(n.Value))
		case "!!bool":
			return "the boolean " + truncate(n.Value)
		case "!!int", "!!float":
			return "the number " + truncate(n.Value)
		}
		return fmt.Sprintf("%s %s", n.ShortTag(), strconv.Quote(truncate(n.Value)))
	}
	return "an unknown node"
}

func truncate(s string) string {
	const max = 40
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut-- // never split a character: messages stay valid UTF-8
	}
	return s[:cut] + "..."
}

// requiredKeys are fields that must be written out in YAML even though
// their zero value is valid: leaving them to a default would hide intent
// (a forgotten task count, a rule whose encryption nobody decided).
var requiredKeys = map[reflect.Type][]struct{ key, msg string }{
	reflect.TypeFor[Class](): {{"tasks", "tasks is required (write tasks: 0 to run no task)"}},
	reflect.TypeFor[Rule]():  {{"encrypt", "encrypt is required: say true (encrypted path) or false (plain path)"}},
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// fieldCache maps a struct type to its YAML field names and indexes.
var fieldCache sync.Map

func yamlFields(t reflect.Type) map[string]int {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]int)
	}
	m := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = i
	}
	fieldCache.Store(t, m)
	return m
}

// fail records a decoding problem and marks the path so that validation
// does not add a second message about the same field.
func (w *where) fail(n *yaml.Node, path, msg string) {
	w.add(nodePos(n), path, msg)
	w.bad[path] = true
}

// decodeValue decodes n into v, strictly, recording the position of every
// field path and collecting every problem instead of stopping at the first.
// It handles exactly the kinds the spec types use.
func decodeValue(w *where, n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode {
		w.fail(n, path, "YAML aliases are not allowed")
		return
	}
	if isNull(n) {
		return // an empty value leaves the zero value; validation judges it
	}
	if v.CanAddr() && v.Addr().Type().Implements(unmarshalerType) {
		if err := v.Addr().Interface().(yaml.Unmarshaler).UnmarshalYAML(n); err != nil {
			w.fail(n, path, err.Error())
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		decodeStruct(w, n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.fail(n, path, "expected a list, got "+describeNode(n))
			return
		}
		if len(n.Content) == 0 {
			return // [] stays nil, as a missing list is: the two mean the same
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			p := indexPath(path, i)
			w.pos[p] = nodePos(item)
			decodeValue(w, item, s.Index(i), p)
		}
		v.Set(s)
	case reflect.Map:
		decodeMap(w, n, v, path)
	case reflect.Pointer:
		// An optional value whose absence means something else than its
		// zero (publish's encrypt, true when left out).
		e := reflect.New(v.Type().Elem())
		decodeValue(w, n, e.Elem(), path)
		v.Set(e)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			w.fail(n, path, "expected a string, got "+describeNode(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Int, reflect.Int64:
		var i int64
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			w.fail(n, path, "expected a whole number, got "+describeNode(n))
			return
		}
		if err := n.Decode(&i); err != nil || v.OverflowInt(i) {
			w.fail(n, path, fmt.Sprintf("number %s is out of range", truncate(n.Value)))
			return
		}
		v.SetInt(i)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			w.fail(n, path, "expected true or false, got "+describeNode(n))
			return
		}
		v.SetBool(b)
	default:
		// Only reachable if a field of a new type is added to the spec
		// types without teaching the decoder about it.
		w.fail(n, path, fmt.Sprintf("cannot decode into a field of type %s", v.Type()))
	}
}

func decodeStruct(w *where, n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		w.fail(n, path, "expected a mapping, got "+describeNode(n))
		return
	}
	fields := yamlFields(v.Type())
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			w.fail(k, path, "expected a field name, got "+describeNode(k))
			continue
		}
		p := joinPath(path, k.Value)
		if prev, dup := seen[k.Value]; dup {
			w.fail(k, p, fmt.Sprintf("field %q is given twice (first on line %d)", truncate(k.Value), prev.Line))
			continue
		}
		seen[k.Value] = k
		idx, known := fields[k.Value]
		if !known {
			w.fail(k, p, unknownField(k.Value, fields))
			continue
		}
		w.pos[p] = nodePos(k)
		decodeValue(w, val, v.Field(idx), p)
	}
	for _, r := range requiredKeys[v.Type()] {
		if _, ok := seen[r.key]; !ok {
			w.add(nodePos(n), joinPath(path, r.key), r.msg)
		}
	}
}

func decodeMap(w *where, n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		w.fail(n, path, "expected a mapping, got "+describeNode(n))
		return
	}
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || isNull(k) {
			w.fail(k, path, "expected a key, got "+describeNode(k))
			continue
		}
		p := keyPath(path, k.Value)
		if prev, dup := seen[k.Value]; dup {
			w.fail(k, p, fmt.Sprintf("key %q is given twice (first on line %d)", truncate(k.Value), prev.Line))
			continue
		}
		seen[k.Value] = k
		w.pos[p] = nodePos(k)
		elem := reflect.New(v.Type().Elem()).Elem()
		decodeValue(w, val, elem, p)
		m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), elem)
	}
	v.Set(m)
}

// unknownField says a field is unknown, and which known one was probably
// meant.
func unknownField(name string, fields map[string]int) string {
	msg := fmt.Sprintf("unknown field %q", truncate(name))
	best, bestDist := "", 3
	for f := range fields {
		d := editDistance(strings.ToLower(name), strings.ToLower(f))
		if d >= len(name) {
			continue // "x" is two edits from "to", but nobody meant it
		}
		if d < bestDist || (d == bestDist && f < best) {
			best, bestDist = f, d
		}
	}
	if best != "" {
		return msg + fmt.Sprintf(": did you mean %q?", best)
	}
	names := make([]string, 0, len(fields))
	for f := range fields {
		names = append(names, f)
	}
	slices.Sort(names)
	return msg + " (known: " + strings.Join(names, ", ") + ")"
}

// editDistance is the Levenshtein distance, for spelling suggestions on
// short field names.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
