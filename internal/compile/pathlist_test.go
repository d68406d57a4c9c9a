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
	eachGoldenAppPaths(t, func(name string, ap AppPaths) { same(t, name, ap) })
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

// BenchmarkPathsEncode is the server's encoding of every app's paths
// (the placement records) for benchFleet: "derived" writes them from a
// plan as the controller does now (AppendJSON per app), "flat" is what it
// did before round 4 of issue 19, json.Marshal of each app's []Path
// already made by the compiler (only the encoding is timed).
func BenchmarkPathsEncode(b *testing.B) {
	p, err := Compile(benchFleet())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("derived", func(b *testing.B) {
		cpu0 := cpuTime()
		for b.Loop() {
			for _, ap := range p.Paths.Apps() {
				// Sized as store.AppPlacement.Encode sizes it.
				_ = ap.AppendJSON(make([]byte, 0, 280*ap.Len()))
			}
		}
		reportCPU(b, cpu0)
	})
	b.Run("flat", func(b *testing.B) {
		var flat [][]Path
		for _, ap := range p.Paths.Apps() {
			var f []Path
			for pa := range ap.All() {
				f = append(f, pa)
			}
			flat = append(flat, f)
		}
		b.ResetTimer()
		cpu0 := cpuTime()
		for b.Loop() {
			for _, f := range flat {
				if _, err := json.Marshal(f); err != nil {
					b.Fatal(err)
				}
			}
		}
		reportCPU(b, cpu0)
	})
}

// eachGoldenPlan calls f with the plan of every golden case that
// compiles (a case of an input error has no plan), named by its case, and
// fails if none does.
func eachGoldenPlan(t *testing.T, f func(name string, p *Plan)) {
	t.Helper()
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
			continue
		}
		f(c.Name(), p)
		n++
	}
	if n == 0 {
		t.Fatal("no golden case compiled")
	}
}

// eachGoldenAppPaths calls f with every app's paths of every golden case
// that compiles, named case/app, and fails if no case has a path.
func eachGoldenAppPaths(t *testing.T, f func(name string, ap AppPaths)) {
	t.Helper()
	n := 0
	eachGoldenPlan(t, func(name string, p *Plan) {
		for _, ap := range p.Paths.Apps() {
			f(name+"/"+ap.App, ap)
			n += ap.Len()
		}
	})
	if n == 0 {
		t.Fatal("no golden case has a path")
	}
}
