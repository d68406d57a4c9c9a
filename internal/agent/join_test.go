package agent_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/agent/agenttest"
	"github.com/corridor-dev/corridor/internal/api"
)

// runJoin runs the agent of h until Run returns (at most 10s) and returns
// its error.
func runJoin(t *testing.T, h *harness) error {
	t.Helper()
	a, err := agent.New(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("Run did not return by itself within 10s (err %v)", err)
	}
	return err
}

// An agent that cannot reach its server gives up after the join timeout,
// saying so and naming the flag.
func TestJoinGivesUpAfterTheJoinTimeout(t *testing.T) {
	h := newHarness(t)
	h.cp.SetDown(true)
	h.cfg.Join.Timeout = 300 * time.Millisecond
	start := time.Now()
	err := runJoin(t, h)
	if err == nil || !strings.Contains(err.Error(), "gave up joining") || !strings.Contains(err.Error(), "--join-timeout") {
		t.Fatalf("Run = %v; want it to give up, naming --join-timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("gave up after %s; want about the 300ms timeout", d)
	}
}

// A wrong join token ends the join at once and names where the token came
// from and where the right one is.
func TestWrongJoinTokenNamesTheTokenFile(t *testing.T) {
	h := newHarness(t)
	h.cfg.JoinToken = "not-the-token"
	h.cfg.Join.TokenSource = "--join-token-file /etc/corridor/join.token"
	err := runJoin(t, h)
	if api.HTTPStatus(err) != http.StatusUnauthorized {
		t.Fatalf("Run = %v; want the 401", err)
	}
	for _, want := range []string{"--join-token-file /etc/corridor/join.token", "DATA_DIR/join.token"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Run = %v; want it to mention %q", err, want)
		}
	}
}

// The error of an agent with no identity and no token has one "agent:"
// prefix, not two.
func TestNoIdentityErrorHasOnePrefix(t *testing.T) {
	h := newHarness(t)
	h.cfg.Bootstrap, h.cfg.JoinToken = nil, ""
	err := runJoin(t, h)
	if err == nil || strings.Contains(err.Error(), "agent: agent:") || strings.Count(err.Error(), "agent:") != 1 {
		t.Fatalf("Run = %v; want one agent: prefix", err)
	}
}

// A server whose certificate the agent cannot verify: the error says to
// check --ca (given, but the wrong one) or to give it (missing), and the
// agent gives up after the join timeout rather than retrying forever.
func TestJoinWithTheWrongCASaysCheckCA(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	other, err := agenttest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	pool, err := api.CAPool(other.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, ca string
		tls      *tls.Config
		want     string
	}{
		{"wrong CA", "--ca /tmp/other/ca.crt", &tls.Config{RootCAs: pool}, "check --ca /tmp/other/ca.crt: it must be the server's DATA_DIR/ca.crt"},
		{"no CA", "", &tls.Config{}, "give --ca, the server's DATA_DIR/ca.crt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			c, err := api.NewClient(srv.URL, "", tc.tls)
			if err != nil {
				t.Fatal(err)
			}
			h.cfg.Bootstrap = c
			h.cfg.Join = agent.JoinOptions{Timeout: 200 * time.Millisecond, CA: tc.ca}
			err = runJoin(t, h)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "gave up joining") {
				t.Fatalf("Run = %v; want %q and a bounded wait", err, tc.want)
			}
		})
	}
}

// An http:// server URL is refused at start: the server speaks HTTPS only
// and the agent would otherwise retry a reset connection forever.
func TestRunHostRefusesHTTP(t *testing.T) {
	done := make(chan error, 1)
	go func() {
		done <- agent.RunHost(context.Background(), agent.HostConfig{
			Servers: []string{"http://198.18.99.1:7443"}, JoinToken: "x", WireGuardPort: 51820, StateDir: t.TempDir(),
		})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "HTTPS only") || !strings.Contains(err.Error(), "https://198.18.99.1:7443") {
			t.Fatalf("RunHost = %v; want the http:// URL refused, suggesting https://", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunHost did not refuse an http:// URL at once")
	}
}
