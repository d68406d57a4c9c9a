package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// chartCases are the cases in the order run.sh reports them, with the
// names a reader knows them by.
var chartCases = []struct{ id, label string }{
	{"veth", "veth (no tunnel)"},
	{"vxlan", "raw VXLAN"},
	{"plain", "Corridor plain"},
	{"encrypted", "Corridor encrypted"},
	{"wggo", "wireguard-go by hand"},
	{"nebula", "Nebula"},
}

// chartRatios are the ratios issue 19 sets targets for, printed under
// each panel.
var chartRatios = []struct{ label, a, b, target string }{
	{"plain / raw VXLAN", "plain", "vxlan", "≥ 0.90"},
	{"encrypted / wireguard-go", "encrypted", "wggo", "≥ 1.00"},
}

// resultKey names one metric of one case at one underlay MTU.
type resultKey struct {
	mtu          int
	kase, metric string
}

// readResults reads run.sh's results.tsv: "mtu case round metric value"
// per line, tab-separated. A value that is not a number (a failed run's
// empty field) is left out; a malformed line is an error naming it.
func readResults(r io.Reader) (map[resultKey][]float64, error) {
	out := map[resultKey][]float64{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 5 {
			return nil, fmt.Errorf("line %d: %d tab-separated fields, want 5 (mtu case round metric value)", n, len(f))
		}
		mtu, err := strconv.Atoi(f[0])
		if err != nil || mtu <= 0 {
			return nil, fmt.Errorf("line %d: mtu %q is not a positive number", n, f[0])
		}
		v, err := strconv.ParseFloat(f[4], 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		k := resultKey{mtu, f[1], f[3]}
		out[k] = append(out[k], v)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	return out, nil
}

// median of xs (not empty); xs is sorted in place.
func median(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// Layout of the chart, in SVG user units.
const (
	chartWidth  = 900
	panelHeight = 300 // bars' area
	panelTop    = 70  // title and legend above the first panel
	panelGap    = 120 // axis labels and ratios below each panel
	chartLeft   = 60
	chartRight  = 20
	barWidth    = 26
)

// writeChart draws the Gbit/s of every case, 1 and 4 streams, one panel
// per underlay MTU: bars at the median, a whisker from min to max, and the
// ratios that issue 19 sets targets for under each panel.
func writeChart(w io.Writer, res map[resultKey][]float64, title string) error {
	var mtus []int
	for k := range res {
		if (k.metric == "gbps_p1" || k.metric == "gbps_p4") && !slices.Contains(mtus, k.mtu) {
			mtus = append(mtus, k.mtu)
		}
	}
	if len(mtus) == 0 {
		return errors.New("no throughput results (gbps_p1, gbps_p4) to draw")
	}
	slices.Sort(mtus)
	top := 0.0
	for k, xs := range res {
		if k.metric == "gbps_p1" || k.metric == "gbps_p4" {
			top = max(top, slices.Max(xs))
		}
	}
	top = niceCeil(top)
	height := panelTop + len(mtus)*(panelHeight+panelGap)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", chartWidth, height, chartWidth, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", chartLeft, html.EscapeString(title))
	// Legend.
	fmt.Fprintf(&b, `<rect x="%d" y="38" width="12" height="12" fill="#4a7ab5"/><text x="%d" y="49">1 stream</text>`+"\n", chartLeft, chartLeft+16)
	fmt.Fprintf(&b, `<rect x="%d" y="38" width="12" height="12" fill="#e08a3c"/><text x="%d" y="49">4 streams</text>`+"\n", chartLeft+90, chartLeft+106)
	runs := 0
	for k, xs := range res {
		if k.metric == "gbps_p1" || k.metric == "gbps_p4" {
			runs = max(runs, len(xs))
		}
	}
	fmt.Fprintf(&b, `<text x="%d" y="49" fill="#555">bar: median Gbit/s of up to %d interleaved runs; line: their min to max</text>`+"\n", chartLeft+200, runs)
	plotW := chartWidth - chartLeft - chartRight
	slot := float64(plotW) / float64(len(chartCases))
	for i, mtu := range mtus {
		y0 := panelTop + i*(panelHeight+panelGap) + 20 // top of the bars' area
		base := y0 + panelHeight
		yOf := func(v float64) float64 { return float64(base) - v/top*float64(panelHeight) }
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-weight="bold">Underlay MTU %d</text>`+"\n", chartLeft, y0-6, mtu)
		// Grid and axis: five steps.
		for s := 0; s <= 5; s++ {
			v := top * float64(s) / 5
			y := yOf(v)
			fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", chartLeft, y, chartWidth-chartRight, y)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>`+"\n", chartLeft-6, y+4, trimFloat(v))
		}
		fmt.Fprintf(&b, `<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle" fill="#555">Gbit/s</text>`+"\n", y0+panelHeight/2, y0+panelHeight/2)
		for j, c := range chartCases {
			cx := float64(chartLeft) + slot*(float64(j)+0.5)
			for s, m := range []struct{ metric, color string }{{"gbps_p1", "#4a7ab5"}, {"gbps_p4", "#e08a3c"}} {
				xs := slices.Clone(res[resultKey{mtu, c.id, m.metric}])
				if len(xs) == 0 {
					continue
				}
				x := cx - barWidth - 2 + float64(s)*(barWidth+4)
				med := median(xs)
				y := yOf(med)
				fmt.Fprintf(&b, `<rect class="bar" data-case="%s" data-metric="%s" data-mtu="%d" x="%.1f" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s, %s: median %.2f Gbit/s over %d runs</title></rect>`+"\n",
					c.id, m.metric, mtu, x, y, barWidth, float64(base)-y, m.color, html.EscapeString(c.label), m.metric[len("gbps_p"):]+" stream(s)", med, len(xs))
				mid := x + barWidth/2
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#222"/>`+"\n", mid, yOf(xs[0]), mid, yOf(xs[len(xs)-1]))
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%.2f</text>`+"\n", mid, min(y, yOf(xs[len(xs)-1]))-4, med)
			}
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", cx, base+18, html.EscapeString(c.label))
		}
		// The ratios of medians, as run.sh's report gives them.
		var parts []string
		for _, r := range chartRatios {
			row := []string{}
			for _, m := range []string{"gbps_p1", "gbps_p4"} {
				x, y := res[resultKey{mtu, r.a, m}], res[resultKey{mtu, r.b, m}]
				if len(x) == 0 || len(y) == 0 {
					row = append(row, "-")
					continue
				}
				if my := median(slices.Clone(y)); my > 0 {
					row = append(row, fmt.Sprintf("%.2f", median(slices.Clone(x))/my))
				} else {
					row = append(row, "-")
				}
			}
			parts = append(parts, fmt.Sprintf("%s: %s (1 stream), %s (4 streams), target %s", r.label, row[0], row[1], r.target))
		}
		for k, p := range parts {
			fmt.Fprintf(&b, `<text class="ratio" x="%d" y="%d">%s</text>`+"\n", chartLeft, base+44+k*18, html.EscapeString(p))
		}
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten, so that the
// axis has round steps.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// chartCmd is `datapath chart`: run.sh's results.tsv to an SVG chart.
func chartCmd(args []string) error {
	fs := flag.NewFlagSet("chart", flag.ContinueOnError)
	in := fs.String("results", "", "run.sh's results.tsv (mtu case round metric value)")
	out := fs.String("o", "", "SVG file to write (default: standard output)")
	title := fs.String("title", "Data path throughput, guest to guest between two servers", "the chart's title")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" {
		return errors.New("chart: --results is required")
	}
	f, err := os.Open(*in)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	defer f.Close()
	res, err := readResults(f)
	if err != nil {
		return fmt.Errorf("chart: %s: %w", *in, err)
	}
	if *out == "" {
		if err := writeChart(os.Stdout, res, *title); err != nil {
			return fmt.Errorf("chart: %w", err)
		}
		return nil
	}
	g, err := os.Create(*out)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	// A chart cut short by a failed write or close is an error, not a
	// file that looks written.
	err = writeChart(g, res, *title)
	if cerr := g.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("chart: %s: %w", *out, err)
	}
	return nil
}
