package agent_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/server"
)

// scrape GETs url and parses it with Prometheus's own text parser.
func scrape(t *testing.T, c *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape %s: %d %s", url, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("scrape %s: content type %q, want the text format", url, ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("%s does not parse as Prometheus text: %v", url, err)
	}
	return fams
}

// value is the value of the family's series whose labels include want.
func value(f *dto.MetricFamily, want map[string]string) (float64, bool) {
	if f == nil {
		return 0, false
	}
	for _, m := range f.Metric {
		ok := true
		for k, v := range want {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			ok = ok && found
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// Both /metrics endpoints parse as Prometheus text: the server's (on its
// HTTPS listener) and the agent's plain-HTTP metrics listener, which
// serves /metrics and nothing else. The agent's carries the class-pair
// counters (allowed and dropped, packets and bytes) and the per-peer
// handshake age and bytes; the server's the apply latency, fan-out and
// host states. Every metric the sample Grafana dashboard names is in one
// of them.
func TestMetricsScrapeAndDashboard(t *testing.T) {
	// The server.
	dir := t.TempDir()
	srv, err := server.New(server.Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	admin, err := api.NewClient(srv.URL(), srv.AdminToken(), &tls.Config{RootCAs: mustPool(t, srv.CACert())})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for admin.Healthy(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatal("server not healthy")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// An apply that cannot be placed (no server) still counts, as an error.
	if _, err := admin.ApplyApp(ctx, []byte("apiVersion: corridor/v1\nkind: App\nname: x\nclasses:\n  - name: a\n    tasks: 1\n    guest: {runtime: netns, command: [sleep, infinity]}\n    resources: {cpu: 10m, memory: 4Mi}\n")); err == nil {
		t.Fatal("apply without servers succeeded")
	}
	sc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: mustPool(t, srv.CACert())}}}
	var sfams map[string]*dto.MetricFamily
	for {
		sfams = scrape(t, sc, srv.URL()+"/metrics")
		if _, ok := value(sfams["corridor_hosts"], map[string]string{"state": "down"}); ok {
			break // the controller has reconciled once
		}
		if time.Now().After(deadline) {
			t.Fatal("corridor_hosts never appeared")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n, ok := value(sfams["corridor_apply_duration_seconds"], map[string]string{"op": "apply", "outcome": "error"}); !ok || n != 1 {
		t.Errorf("corridor_apply_duration_seconds{op=apply,outcome=error} count = %v %v, want 1", n, ok)
	}
	for _, name := range []string{"corridor_fanout_duration_seconds", "corridor_fanout_pending_hosts", "corridor_compile_duration_seconds", "corridor_http_requests_total"} {
		if sfams[name] == nil {
			t.Errorf("the server's metrics lack %s", name)
		}
	}

	// The agent, on a metrics listener of its own.
	h := newHarness(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.cfg.MetricsListener = ln
	h.start()
	h.apply(t, "applied", state("shop/web/0"))
	h.dp.SetDrops([]api.DropCount{
		{App: "shop", FromClass: "web", ToClass: "db", Packets: 7, Bytes: 420},
		{App: "shop", FromClass: "web", ToClass: "db", Kind: "allow", Packets: 3, Bytes: 180},
		{Kind: "spoof", Packets: 1, Bytes: 60},
	})
	h.agent.Status(ctx) // refreshes the path counters, as every heartbeat does
	base := "http://" + ln.Addr().String()
	afams := scrape(t, http.DefaultClient, base+"/metrics")
	pair := map[string]string{"app": "shop", "from_class": "web", "to_class": "db"}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"corridor_agent_firewall_dropped_packets_total", map[string]string{"app": "shop", "from_class": "web", "to_class": "db", "kind": "pair"}, 7},
		{"corridor_agent_firewall_dropped_bytes_total", map[string]string{"app": "shop", "kind": "pair"}, 420},
		{"corridor_agent_firewall_dropped_packets_total", map[string]string{"kind": "spoof"}, 1},
		{"corridor_agent_firewall_allowed_connections_total", pair, 3},
		{"corridor_agent_firewall_allowed_bytes_total", pair, 180},
	} {
		if v, ok := value(afams[c.name], c.labels); !ok || v != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	if v, ok := value(afams["corridor_agent_firewall_dropped_packets_total"], map[string]string{"kind": "allow"}); ok {
		t.Errorf("allowed connections are counted as drops: %v", v)
	}
	if age, ok := value(afams["corridor_agent_peer_handshake_age_seconds"], map[string]string{"peer": "s2"}); !ok || age < 2 || age > 60 {
		t.Errorf("handshake age of peer s2 = %v (found %v), want about 3s", age, ok)
	}
	if v, ok := value(afams["corridor_agent_peer_sent_bytes_total"], map[string]string{"peer": "s2"}); !ok || v == 0 {
		t.Errorf("bytes sent to s2 = %v %v", v, ok)
	}
	// The plain listener serves the metrics alone: no status, no logs, no
	// probe without the mTLS API.
	for _, p := range []string{"/v1/status", "/v1/logs/shop/web/0"} {
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s on the metrics listener = %d, want 404", p, resp.StatusCode)
		}
	}

	// Every metric the dashboard names exists in a scrape.
	raw, err := os.ReadFile("../../docs/grafana/corridor.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("docs/grafana/corridor.json: %v", err)
	}
	names := regexp.MustCompile(`\bcorridor_[a-z0-9_]+`)
	found := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, n := range names.FindAllString(tg.Expr, -1) {
				found++
				if !exists(n, sfams, afams) {
					t.Errorf("dashboard panel %q names %s, which neither /metrics serves", p.Title, n)
				}
			}
		}
	}
	if found < 10 {
		t.Errorf("the dashboard names only %d metrics", found)
	}
}

// exists reports whether a metric name, as PromQL names it (a histogram's
// _bucket, _sum, _count series included), is in one of the scrapes.
func exists(name string, scrapes ...map[string]*dto.MetricFamily) bool {
	for _, fams := range scrapes {
		if fams[name] != nil {
			return true
		}
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suf); ok {
				if f := fams[base]; f != nil && (f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_SUMMARY) {
					return true
				}
			}
		}
	}
	return false
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mustPool(t *testing.T, caPEM []byte) *x509.CertPool {
	t.Helper()
	p, err := api.CAPool(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
