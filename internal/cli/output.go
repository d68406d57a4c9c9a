package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
)

// Output formats of every command that prints data.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

// addOutputFlag adds -o/--output to cmd and returns where its value lands.
func addOutputFlag(cmd *cobra.Command) *string {
	f := cmd.Flags().StringP("output", "o", formatTable, "output format: table, json or yaml")
	return f
}

// printData writes v to w as JSON or YAML, or calls table for the table
// format. Data goes to stdout; talk goes to stderr.
func printData(w io.Writer, format string, v any, table func(t *Table)) error {
	switch format {
	case formatJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case formatYAML:
		// Through JSON, so that YAML output uses the same field names and
		// the same encodings (addresses, times) as the API.
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		var generic any
		if err := yaml.Unmarshal(b, &generic); err != nil {
			return err
		}
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		defer enc.Close()
		return enc.Encode(generic)
	case formatTable, "":
		t := NewTable(w)
		table(t)
		return t.Flush()
	default:
		return fmt.Errorf("unknown output format %q: use table, json or yaml", format)
	}
}

// Table prints aligned columns.
type Table struct {
	tw *tabwriter.Writer
}

// NewTable returns a table writing to w.
func NewTable(w io.Writer) *Table {
	return &Table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

// Header prints a header row (upper-cased).
func (t *Table) Header(cols ...string) {
	up := make([]string, len(cols))
	for i, c := range cols {
		up[i] = strings.ToUpper(c)
	}
	t.Row(up...)
}

// Row prints one row.
func (t *Table) Row(cols ...string) {
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

// Flush writes out the table.
func (t *Table) Flush() error { return t.tw.Flush() }
