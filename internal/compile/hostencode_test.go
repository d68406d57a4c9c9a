package compile

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestHostStateEncode: the hand-written encoder of host states
// (hoststate.State.Encode, which the server uses) writes what json.Marshal
// writes for every host state of every golden case, of a sized fleet, and
// of a recompile through the cache (whose states share lists with the
// states before), so that the server's stored states stay byte for byte
// what they were.
func TestHostStateEncode(t *testing.T) {
	check := func(name string, p *Plan) {
		t.Helper()
		for i := range p.Hosts {
			h := &p.Hosts[i]
			want, err := json.Marshal(h)
			if err != nil {
				t.Fatal(err)
			}
			got, err := h.Encode()
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s, host %s: Encode (%v) differs from json.Marshal:\n got %.300s\nwant %.300s", name, h.Host, err, got, want)
			}
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
			continue
		}
		check(c.Name(), p)
		n++
	}
	if n == 0 {
		t.Fatal("no golden case compiled")
	}
	servers, apps, div := 60, 8, 10
	if raceDetector {
		servers, apps, div = 24, 4, 20
	}
	in := sizedFleet(servers, apps, div)
	var k Cache
	p, err := k.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	check("fleet", p)
	in.Current, in.Networks = assignments(p)
	in.Apps[0].Classes[0].Tasks++
	if p, err = k.Compile(in); err != nil {
		t.Fatal(err)
	}
	check("fleet, recompiled", p)
}

// BenchmarkHostStatesEncode is the server's encoding of every host state
// of benchFleet's compile, by json.Marshal (before round 5 of issue 19)
// and by hoststate.State.Encode (the same bytes).
func BenchmarkHostStatesEncode(b *testing.B) {
	p, err := Compile(benchFleet())
	if err != nil {
		b.Fatal(err)
	}
	for _, enc := range []struct {
		name string
		f    func(*HostState) ([]byte, error)
	}{
		{"marshal", func(h *HostState) ([]byte, error) { return json.Marshal(h) }},
		{"encode", (*HostState).Encode},
	} {
		b.Run(enc.name, func(b *testing.B) {
			n := 0
			cpu0 := cpuTime()
			for b.Loop() {
				n = 0
				for i := range p.Hosts {
					js, err := enc.f(&p.Hosts[i])
					if err != nil {
						b.Fatal(err)
					}
					n += len(js)
				}
			}
			reportCPU(b, cpu0)
			b.ReportMetric(float64(n), "bytes")
		})
	}
}
