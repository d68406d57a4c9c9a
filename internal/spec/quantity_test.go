package spec

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

func TestMilliCPUYAML(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want MilliCPU
		err  string
	}{
		{in: `"500m"`, want: 500},
		{in: `500m`, want: 500},
		{in: `"2"`, want: 2000},
		{in: `2`, want: 2000},
		{in: `1.5`, want: 1500},
		{in: `"0.25"`, want: 250},
		{in: `0.001`, want: 1},
		{in: `1024`, want: 1024000},
		{in: `0`, want: 0},
		{in: `-1`, err: "negative"},
		{in: `"-500m"`, err: "negative"},
		{in: `1025`, err: "more than 1024 CPUs"},
		{in: `2000000m`, err: "more than 1024 CPUs"},
		{in: `0.0005`, err: "finer than one millicore"},
		{in: `1.5m`, err: "whole number"},
		{in: `abc`, err: "not a CPU quantity"},
		{in: `1e3`, err: "not a CPU quantity"},
		{in: `.inf`, err: "not a CPU quantity"},
		{in: `0x10`, err: "not a CPU quantity"},
		{in: `"500 m"`, err: "not a CPU quantity"},
		{in: `true`, err: "expected a quantity"},
		{in: `[1]`, err: "expected a quantity"},
		{in: `"` + strings.Repeat("9", 100) + `"`, err: "not a CPU quantity"},
	} {
		var got MilliCPU
		err := yaml.Unmarshal([]byte(tc.in), &got)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("cpu %s: got %v, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("cpu %s: got %v, %v; want %d", tc.in, int64(got), err, tc.want)
		}
	}
}

func TestBytesYAML(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Bytes
		err  string
	}{
		{in: `1234`, want: 1234},
		{in: `"1234"`, want: 1234},
		{in: `256Mi`, want: 256 << 20},
		{in: `"1Gi"`, want: 1 << 30},
		{in: `512M`, want: 512e6},
		{in: `2G`, want: 2e9},
		{in: `100Ki`, want: 100 << 10},
		{in: `1.5Gi`, want: 3 << 29},
		{in: `16Ti`, want: 16 << 40},
		{in: `1k`, want: 1000},
		{in: `-1`, err: "negative"},
		{in: `"-1Gi"`, err: "negative"},
		{in: `17Ti`, err: "more than 16Ti"},
		{in: `99999999999999999999`, err: "more than 16Ti"},
		{in: `1.5`, err: "whole number of bytes"},
		{in: `1.0000001Ki`, err: "whole number of bytes"},
		{in: `1GB`, err: "not a memory quantity"},
		{in: `Mi`, err: "not a memory quantity"},
		{in: `lots`, err: "not a memory quantity"},
		{in: `1 Gi`, err: "not a memory quantity"},
		{in: `{a: 1}`, err: "expected a quantity"},
		{in: `true`, err: "expected a quantity"},
	} {
		var got Bytes
		err := yaml.Unmarshal([]byte(tc.in), &got)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("memory %s: got %v, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("memory %s: got %d, %v; want %d", tc.in, int64(got), err, tc.want)
		}
	}
}

func TestTruncateKeepsUTF8(t *testing.T) {
	s := strings.Repeat("é", 30) // 60 bytes, every character two
	if got := truncate(s); !utf8.ValidString(got) || !strings.HasSuffix(got, "...") {
		t.Errorf("truncate(%q) = %q", s, got)
	}
}

func TestQuantityCanonical(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{MilliCPU(500), "500m"},
		{MilliCPU(2000), "2"},
		{MilliCPU(1500), "1500m"},
		{MilliCPU(0), "0"},
		{Bytes(256 << 20), "256Mi"},
		{Bytes(1 << 30), "1Gi"},
		{Bytes(512e6), "512M"},
		{Bytes(2e9), "2G"},
		{Bytes(100 << 10), "100Ki"},
		{Bytes(1234), "1234"},
		{Bytes(1024), "1Ki"},
		{Bytes(0), "0"},
		{Bytes(3 << 29), "1536Mi"},
	} {
		if got := tc.v.(interface{ String() string }).String(); got != tc.want {
			t.Errorf("%T(%d).String() = %q, want %q", tc.v, tc.v, got, tc.want)
		}
	}
}

// Quantities written by MarshalYAML read back to the same value, and JSON
// keeps them plain integers.
func TestQuantityRoundTrip(t *testing.T) {
	for _, r := range []Resources{
		{CPU: 500, Memory: 256 << 20},
		{CPU: 2000, Memory: 1234},
		{CPU: 1, Memory: 512e6},
		{CPU: MaxMilliCPU, Memory: MaxBytes},
	} {
		out, err := yaml.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back Resources
		if err := yaml.Unmarshal(out, &back); err != nil || back != r {
			t.Errorf("YAML round trip of %+v via %q: got %+v, %v", r, out, back, err)
		}
		js, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var plain struct{ CPU, Memory int64 }
		if err := json.Unmarshal(js, &plain); err != nil || plain.CPU != int64(r.CPU) || plain.Memory != int64(r.Memory) {
			t.Errorf("JSON of %+v is %s, want plain integers", r, js)
		}
	}
	out, _ := yaml.Marshal(Resources{CPU: 500, Memory: 256 << 20})
	if want := "cpu: 500m\nmemory: 256Mi\n"; string(out) != want {
		t.Errorf("YAML = %q, want %q", out, want)
	}
}
