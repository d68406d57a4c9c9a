package compile

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// TestPathJSON: the hand-written encoder of paths (AppendJSON, and so
// MarshalJSON) writes the bytes json.Marshal writes for the same []Path,
// for every golden case and for paths with what JSON must escape.
func TestPathJSON(t *testing.T) {
	same := func(t *testing.T, name string, ap AppPaths) {
		t.Helper()
		var flat []Path
		for p := range ap.All() {
			flat = append(flat, p)
		}
		if flat == nil {
			flat = []Path{}
		}
		want, err := json.Marshal(flat)
		if err != nil {
			t.Fatal(err)
		}
		if got := ap.AppendJSON(nil); !bytes.Equal(got, want) {
			t.Errorf("%s: AppendJSON\n got %s\nwant %s", name, got, want)
		}
		got, err := json.Marshal(ap)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: json.Marshal(AppPaths) = %s, %v\nwant %s", name, got, err, want)
		}
	}
	cases, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range cases {
		if !c.IsDir() || c.Name() == "fuzz" {
			continue
		}
		p, err := Compile(loadCase(t, filepath.Join("testdata", c.Name())))
		if err != nil {
			continue // a case of an input error: no plan
		}
		for _, ap := range p.Paths.Apps() {
			same(t, c.Name()+"/"+ap.App, ap)
			n += ap.Len()
		}
	}
	if n == 0 {
		t.Fatal("no golden case has a path")
	}
	same(t, "empty", AppPaths{})
	odd := NewPaths([]Path{
		{App: "a<b>&c", ToApp: "ü\"\\\n\x7f", From: "a/x/0", To: "b/y/1", FromClass: "\u2028", ToClass: "\t",
			FromServer: "s<1", ToServer: "s>2", FromAddr: netip.MustParseAddr("::ffff:1.2.3.4"), ToAddr: netip.MustParseAddr("fd00::1"),
			Protocol: "udp", Ports: []int{}, Encrypt: true},
		{App: "a<b>&c", Ports: nil, Local: true},
		{App: "a<b>&c", From: "\xff", Ports: []int{1, 65535}},
	})
	same(t, "escaped", odd.Apps()[0])
}
