// Package flagfile sets a command's flags from a YAML file (`--config FILE`):
// each top-level key names a flag, spelled as on the command line without
// the dashes, and its value is what the flag would take. A flag given on the
// command line wins over the file. An unknown key, a value of the wrong
// shape or one the flag refuses is an error naming FILE:LINE:COLUMN, and
// nothing is set.
package flagfile

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// Flag is the name of the flag that names the file.
const Flag = "config"

// ErrBadFile is wrapped by every error about the file's content.
var ErrBadFile = errors.New("flagfile: bad configuration file")

// Apply reads path and sets, in fs, each flag the file names and the
// command line did not set. skip names flags the file may not set (such as
// "config" itself, or one-shot actions like "cleanup").
func Apply(fs *pflag.FlagSet, path string, skip ...string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--%s: %w", Flag, err)
	}
	return apply(fs, path, data, skip)
}

type setting struct {
	flag  *pflag.Flag
	value string
	pos   string
}

func apply(fs *pflag.FlagSet, path string, data []byte, skip []string) error {
	bad := func(n *yaml.Node, format string, a ...any) error {
		return fmt.Errorf("%w: %s:%d:%d: %s", ErrBadFile, path, n.Line, n.Column, fmt.Sprintf(format, a...))
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadFile, path, err)
	}
	if len(doc.Content) == 0 { // empty file, or only comments
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return bad(root, "want a mapping of flag names to values")
	}
	var todo []setting
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		name := k.Value
		if k.Kind != yaml.ScalarNode || name == "" {
			return bad(k, "a key must be a flag name")
		}
		f := fs.Lookup(name)
		switch {
		case f == nil || f.Hidden:
			return bad(k, "unknown key %q: not a flag of this command (see --help)", name)
		case name == Flag || slices.Contains(skip, name):
			return bad(k, "%q cannot be set from a configuration file", name)
		case seen[name]:
			return bad(k, "key %q given twice", name)
		}
		seen[name] = true
		val, err := value(v)
		if err != nil {
			return bad(v, "%s: %v", name, err)
		}
		todo = append(todo, setting{flag: f, value: val, pos: fmt.Sprintf("%s:%d:%d", path, v.Line, v.Column)})
	}
	// Check every value before setting any: a bad file changes nothing.
	for _, s := range todo {
		if err := checkValue(s.flag, s.value); err != nil {
			return fmt.Errorf("%w: %s: %s: %w", ErrBadFile, s.pos, s.flag.Name, err)
		}
	}
	for _, s := range todo {
		if s.flag.Changed { // the command line wins
			continue
		}
		if err := fs.Set(s.flag.Name, s.value); err != nil {
			return fmt.Errorf("%w: %s: %s: %w", ErrBadFile, s.pos, s.flag.Name, err)
		}
	}
	return nil
}

// value turns a node into the text the flag's Set takes: a scalar as
// written, a sequence of scalars joined by commas (list flags), a mapping of
// scalars as KEY=VALUE pairs joined by commas (such as labels).
func value(n *yaml.Node) (string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "", errors.New("no value (write \"\" for an empty string)")
		}
		return n.Value, nil
	case yaml.SequenceNode:
		parts := make([]string, 0, len(n.Content))
		for _, e := range n.Content {
			if e.Kind != yaml.ScalarNode {
				return "", errors.New("a list may hold only plain values")
			}
			if strings.Contains(e.Value, ",") {
				return "", fmt.Errorf("list item %q holds a comma", e.Value)
			}
			parts = append(parts, e.Value)
		}
		return strings.Join(parts, ","), nil
	case yaml.MappingNode:
		parts := make([]string, 0, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || v.Kind != yaml.ScalarNode {
				return "", errors.New("a mapping may hold only plain keys and values")
			}
			if strings.ContainsAny(k.Value, ",=") || strings.Contains(v.Value, ",") {
				return "", fmt.Errorf("%s: %s: a key may hold neither ',' nor '=', a value no ','", k.Value, v.Value)
			}
			parts = append(parts, k.Value+"="+v.Value)
		}
		return strings.Join(parts, ","), nil
	}
	return "", errors.New("want a value, a list or a mapping")
}

// checkValue parses val with a fresh copy of the flag's type, so that a bad
// value is found before any flag is set.
func checkValue(f *pflag.Flag, val string) error {
	tmp := pflag.NewFlagSet("check", pflag.ContinueOnError)
	tmp.SetOutput(discard{})
	switch f.Value.Type() {
	case "bool":
		tmp.Bool("x", false, "")
	case "duration":
		tmp.Duration("x", 0, "")
	case "int":
		tmp.Int("x", 0, "")
	case "stringToString":
		tmp.StringToString("x", nil, "")
	case "stringSlice":
		tmp.StringSlice("x", nil, "")
	default:
		return nil // strings and types of the flag's own: checked by Set
	}
	return tmp.Set("x", val)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
