package main

import (
	"encoding/xml"
	"io"
	"strconv"
	"strings"
	"testing"
)

// sampleResults is a results.tsv of two rounds at two MTUs, with a failed
// run (empty value) and a load line, as run.sh writes them.
const sampleResults = `1500	veth	1	load1	0.5
1500	veth	1	gbps_p1	16
1500	veth	2	gbps_p1	14
1500	veth	1	gbps_p4	24
1500	vxlan	1	gbps_p1	10
1500	vxlan	2	gbps_p1	12
1500	vxlan	1	gbps_p4	16
1500	plain	1	gbps_p1	9
1500	plain	2	gbps_p1	11
1500	plain	1	gbps_p4	12
1500	plain	2	gbps_p4	
1500	encrypted	1	gbps_p1	3
1500	encrypted	1	gbps_p4	2.8
1500	wggo	1	gbps_p1	2.5
1500	wggo	1	gbps_p4	2.8
9000	veth	1	gbps_p1	14.5
9000	encrypted	1	gbps_p1	3.2

9000	wggo	1	gbps_p1	3.2
`

// bar is one drawn bar of the chart.
type bar struct {
	Class  string  `xml:"class,attr"`
	Case   string  `xml:"data-case,attr"`
	Metric string  `xml:"data-metric,attr"`
	MTU    int     `xml:"data-mtu,attr"`
	Y      float64 `xml:"y,attr"`
	Height float64 `xml:"height,attr"`
}

// drawn parses the chart: its bars and the text of its ratio lines.
func drawn(t *testing.T, svg string) (bars []bar, ratios []string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(svg))
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return bars, ratios
		}
		if err != nil {
			t.Fatalf("the chart is not well-formed XML: %v", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		switch {
		case se.Name.Local == "rect" && attr(se, "class") == "bar":
			var b bar
			if err := d.DecodeElement(&b, &se); err != nil {
				t.Fatal(err)
			}
			bars = append(bars, b)
		case se.Name.Local == "text" && attr(se, "class") == "ratio":
			var s string
			if err := d.DecodeElement(&s, &se); err != nil {
				t.Fatal(err)
			}
			ratios = append(ratios, s)
		}
	}
}

func attr(se xml.StartElement, name string) string {
	for _, a := range se.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func TestChartBarsAtMedians(t *testing.T) {
	res, err := readResults(strings.NewReader(sampleResults))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := writeChart(&b, res, "a <test> & title"); err != nil {
		t.Fatal(err)
	}
	bars, ratios := drawn(t, b.String())
	// One bar per (MTU, case, streams) with results: 10 at 1500 (nebula
	// missing; plain's failed 4-stream run left out, its other counts), 3
	// at 9000.
	if len(bars) != 13 {
		t.Fatalf("%d bars, want 13: %+v", len(bars), bars)
	}
	// Heights are proportional to the medians: veth's 1-stream median is
	// 15 (14 and 16), plain's 4-stream median is 12 (the failed run left
	// out), encrypted's 3.
	h := map[string]float64{}
	for _, x := range bars {
		h[strconv.Itoa(x.MTU)+"/"+x.Case+"/"+x.Metric] = x.Height
	}
	unit := h["1500/veth/gbps_p1"] / 15
	if unit <= 0 {
		t.Fatalf("veth's bar has height %v", h["1500/veth/gbps_p1"])
	}
	for k, want := range map[string]float64{"1500/plain/gbps_p4": 12, "1500/encrypted/gbps_p1": 3, "9000/veth/gbps_p1": 14.5, "1500/vxlan/gbps_p1": 11} {
		if got := h[k] / unit; got < want-0.01 || got > want+0.01 {
			t.Errorf("bar %s is %.2f Gbit/s high, want %.2f", k, got, want)
		}
	}
	// Ratios of medians: plain/vxlan 10/11 and 12/16, encrypted/wggo 3/2.5
	// and 2.8/2.8; at 9000 only encrypted/wggo's 1-stream ratio exists.
	want := []string{
		"plain / raw VXLAN: 0.91 (1 stream), 0.75 (4 streams), target ≥ 0.90",
		"encrypted / wireguard-go: 1.20 (1 stream), 1.00 (4 streams), target ≥ 1.00",
		"plain / raw VXLAN: - (1 stream), - (4 streams), target ≥ 0.90",
		"encrypted / wireguard-go: 1.00 (1 stream), - (4 streams), target ≥ 1.00",
	}
	if strings.Join(ratios, "\n") != strings.Join(want, "\n") {
		t.Errorf("ratios:\n%s\nwant:\n%s", strings.Join(ratios, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(b.String(), "a &lt;test&gt; &amp; title") {
		t.Error("the title is not escaped")
	}
}

func TestChartErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"1500\tveth\t1\tgbps_p1\n", "line 1: 4 tab-separated fields, want 5"},
		{"1500\tveth\t1\tgbps_p1\t3\nx\tveth\t1\tgbps_p1\t3\n", "line 2: mtu \"x\" is not a positive number"},
	} {
		if _, err := readResults(strings.NewReader(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("readResults(%q) = %v, want an error with %q", tc.in, err, tc.want)
		}
	}
	res, err := readResults(strings.NewReader("1500\tveth\t1\trr_us\t60\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeChart(io.Discard, res, "t"); err == nil || !strings.Contains(err.Error(), "no throughput results") {
		t.Errorf("a chart of no throughput: %v, want an error saying so", err)
	}
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[float64]float64{0: 1, 0.3: 0.5, 16.7: 20, 24.4: 25, 3: 5, 100: 100, 101: 200} {
		if got := niceCeil(in); got != want {
			t.Errorf("niceCeil(%v) = %v, want %v", in, got, want)
		}
	}
}
