package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/agent/agenttest"
	"github.com/corridor-dev/corridor/internal/api"
)

// serverTLS is the TLS configuration of a caller of the agent API holding
// a certificate with CN cn from ca (none when cn is empty), expecting agent.
func serverTLS(t *testing.T, ca *agenttest.CA, roots *x509.CertPool, cn, agentName string) *tls.Config {
	t.Helper()
	var pair tls.Certificate
	if cn != "" {
		key, cert, err := ca.Issue(cn)
		if err != nil {
			t.Fatal(err)
		}
		if pair, err = tls.X509KeyPair(cert, key); err != nil {
			t.Fatal(err)
		}
	}
	c := api.AgentAPIClientTLS(roots, pair, agentName)
	if cn == "" {
		c.Certificates = nil
	}
	return c
}

func TestAPIAcceptsOnlyTheServer(t *testing.T) {
	h := newHarness(t)
	preJoin(t, h.cp, h.dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.cfg.Listener = ln
	h.cfg.Logs = (&fakeLogs{}).logs
	h.start()
	addr := ln.Addr().String()
	roots := x509.NewCertPool()
	roots.AddCert(h.cp.CA.Cert)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	server := api.NewAgentClient(addr, serverTLS(t, h.cp.CA, roots, agent.ServerCommonName, host))
	var st api.Status
	eventually(t, "the API to answer the server", func() bool {
		st, err = server.Status(ctx)
		return err == nil
	})
	if st.Name != host {
		t.Fatalf("status of %q", st.Name)
	}
	logs, err := server.Logs(ctx, "shop/web/0", 2, false)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(logs)
	logs.Close()
	if string(b) != "two\nthree\n" {
		t.Errorf("logs through the client: %q", b)
	}
	if _, err := server.Logs(ctx, "shop/web/9", 2, false); api.HTTPStatus(err) != 404 {
		t.Errorf("logs of a task not here: %v, want a 404", err)
	}
	if _, err := server.Probe(ctx, api.ProbeRequest{FromTask: "shop/web/0"}); api.HTTPStatus(err) != 501 {
		t.Errorf("probe on an agent that cannot: %v, want a 501", err)
	}

	stranger, err := agenttest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*tls.Config{
		"another agent":        serverTLS(t, h.cp.CA, roots, "s2", host),
		"no certificate":       serverTLS(t, h.cp.CA, roots, "", host),
		"server of another CA": serverTLS(t, stranger, roots, agent.ServerCommonName, host),
	} {
		if _, err := api.NewAgentClient(addr, c).Status(ctx); err == nil {
			t.Errorf("%s: answered, want the TLS handshake refused", name)
		}
	}

	// The server, for its part, refuses an agent that is not the one it
	// meant to call.
	_, err = api.NewAgentClient(addr, serverTLS(t, h.cp.CA, roots, agent.ServerCommonName, "s2")).Status(ctx)
	if err == nil || !strings.Contains(err.Error(), `expected agent "s2"`) {
		t.Errorf("calling s2 at s1's address: %v", err)
	}
}

// fakeLogs serves a fixed log per task and, when followed, appends a line
// every 5ms.
type fakeLogs struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeLogs) logs(ctx context.Context, task string, lines int, follow bool, w io.Writer) error {
	f.mu.Lock()
	f.calls = append(f.calls, fmt.Sprintf("%s %d %v", task, lines, follow))
	f.mu.Unlock()
	if task != "shop/web/0" {
		return fmt.Errorf("log of %s: %w", task, fs.ErrNotExist)
	}
	all := []string{"one", "two", "three"}
	for _, l := range all[max(0, len(all)-lines):] {
		fmt.Fprintln(w, l)
	}
	for i := 0; follow; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Millisecond):
			fmt.Fprintf(w, "more %d\n", i)
		}
	}
	return nil
}

// apiHarness is an agent with a desired state, its handler served in
// plain HTTP (TLS is tested above).
func apiHarness(t *testing.T) (*harness, *httptest.Server, *fakeLogs, *[]api.ProbeRequest) {
	h := newHarness(t)
	fl := &fakeLogs{}
	var probes []api.ProbeRequest
	var mu sync.Mutex
	h.cfg.Logs = fl.logs
	h.cfg.Probe = func(_ context.Context, req api.ProbeRequest) (api.ProbeResult, error) {
		mu.Lock()
		defer mu.Unlock()
		probes = append(probes, req)
		return api.ProbeResult{Connected: true, RTT: time.Millisecond, MarkerSeen: true}, nil
	}
	h.start()
	h.apply(t, "applied", state("shop/web/0"))
	srv := httptest.NewServer(h.agent.Handler())
	t.Cleanup(srv.Close)
	return h, srv, fl, &probes
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAPILogs(t *testing.T) {
	_, srv, fl, _ := apiHarness(t)
	for _, c := range []struct {
		path string
		code int
		body string
	}{
		{"/v1/logs/shop/web/0?lines=2", 200, "two\nthree\n"},
		{"/v1/logs/shop%2Fweb%2F0", 200, "one\ntwo\nthree\n"},
		{"/v1/logs/shop/web/0?lines=0", 200, ""},
		{"/v1/logs/shop/web/9", 404, "has no log on s1"},
		{"/v1/logs/shop/web/0?lines=x", 400, "lines:"},
		{"/v1/logs/shop/web/0?lines=-1", 400, "lines:"},
		{"/v1/logs/shop/web/0?follow=maybe", 400, "follow:"},
	} {
		code, body := get(t, srv.URL+c.path)
		if code != c.code || !strings.Contains(body, c.body) || (code == 200 && body != c.body) {
			t.Errorf("GET %s = %d %q, want %d %q", c.path, code, body, c.code, c.body)
		}
	}
	fl.mu.Lock()
	if fl.calls[0] != "shop/web/0 2 false" || fl.calls[1] != "shop/web/0 100 false" {
		t.Errorf("calls = %q", fl.calls)
	}
	fl.mu.Unlock()

	// Following streams lines as they come.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/logs/shop/web/0?lines=1&follow=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var got []string
	for len(got) < 3 && sc.Scan() {
		got = append(got, sc.Text())
	}
	if strings.Join(got, ",") != "three,more 0,more 1" {
		t.Fatalf("followed lines %q", got)
	}
}

func TestAPIProbe(t *testing.T) {
	_, srv, _, probes := apiHarness(t)
	post := func(body string) (int, string) {
		resp, err := http.Post(srv.URL+"/v1/probe", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	marker := `"bWFya2VyLTEyMzQ1Ng=="` // "marker-123456"
	code, body := post(`{"fromTask":"shop/web/0","toAddr":"100.64.0.20","network":"tcp","port":5432,"marker":` + marker + `}`)
	if code != 200 {
		t.Fatalf("probe = %d %s", code, body)
	}
	var res api.ProbeResult
	if err := json.Unmarshal([]byte(body), &res); err != nil || !res.Connected || !res.MarkerSeen || res.RTT != time.Millisecond {
		t.Fatalf("result %s (%v)", body, err)
	}
	if len(*probes) != 1 {
		t.Fatalf("%d probes run", len(*probes))
	}
	p := (*probes)[0]
	if p.CaptureIface != "eth0" || p.Timeout != agent.DefaultProbeTimeout || !bytes.Equal(p.Marker, []byte("marker-123456")) {
		t.Errorf("probe request not completed: %+v", p)
	}

	for _, c := range []struct {
		body string
		code int
		want string
	}{
		{`{"fromTask":"shop/db/0","toAddr":"100.64.0.20","network":"tcp","port":5432,"marker":` + marker + `}`, 404, "fromTask: task shop/db/0 does not run on s1"},
		{`{"toAddr":"100.64.0.20","network":"tcp","port":5432,"marker":` + marker + `}`, 400, "fromTask: required"},
		{`{"fromTask":"shop/web/0","toAddr":"db","network":"tcp","port":5432,"marker":` + marker + `}`, 400, "toAddr:"},
		{`{"fromTask":"shop/web/0","toAddr":"100.64.0.20","network":"sctp","port":5432,"marker":` + marker + `}`, 400, "network:"},
		{`{"fromTask":"shop/web/0","toAddr":"100.64.0.20","network":"udp","port":0,"marker":` + marker + `}`, 400, "port:"},
		{`{"fromTask":"shop/web/0","toAddr":"100.64.0.20","network":"udp","port":53,"marker":"eA=="}`, 400, "marker:"},
		{`{"fromTask":"shop/web/0","toAddr":"100.64.0.20","network":"udp","port":53,"marker":` + marker + `,"timeout":-1}`, 400, "timeout:"},
		{`{"fromTask":"shop/web/0","bogus":1}`, 400, "unknown field"},
	} {
		code, body := post(c.body)
		if code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("POST %s = %d %s, want %d %q", c.body, code, body, c.code, c.want)
		}
	}
	if len(*probes) != 1 {
		t.Errorf("invalid probes ran: %d", len(*probes))
	}
}

func TestAPIMetrics(t *testing.T) {
	h, srv, _, _ := apiHarness(t)
	h.dp.SetDrops([]api.DropCount{{App: "shop", FromClass: "web", ToClass: "db", Packets: 7}})
	h.dp.SetOffload("on", 3, 1)
	code, body := get(t, srv.URL+"/v1/status") // refreshes the guest gauges and path counters
	// An offloaded connection of an encrypted path is a fail-closed
	// breach, told as an error of the host.
	if code != 200 || !strings.Contains(body, "fail-closed breach: 1 connections of encrypted paths offloaded") || !strings.Contains(body, `"offloadedFlows":3`) {
		t.Errorf("status = %d, lacks the offloaded flows or the breach: %s", code, body)
	}
	code, body = get(t, srv.URL+"/metrics")
	if code != 200 {
		t.Fatalf("metrics = %d", code)
	}
	for _, want := range []string{
		fmt.Sprintf("corridor_agent_applied_revision %d", h.agent.AppliedRevision()),
		"corridor_agent_reconcile_duration_seconds_count 1",
		"corridor_agent_reconcile_errors_total 0",
		`corridor_agent_guests{state="running"} 1`,
		`corridor_agent_guests{state="failed"} 0`,
		fmt.Sprintf(`corridor_agent_peer_sent_bytes_total{peer="s2"} %d`, 2000*h.dp.Applies()),
		`corridor_agent_firewall_dropped_packets_total{app="shop",from_class="web",kind="pair",to_class="db"} 7`,
		`corridor_agent_offloaded_flows{path="plain"} 3`,
		`corridor_agent_offloaded_flows{path="encrypted"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
