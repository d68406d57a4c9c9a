package agent_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/agent/agenttest"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/server"
	"github.com/corridor-dev/corridor/internal/spec"
)

// realServer runs a Corridor server (embedded etcd) on loopback.
func realServer(t *testing.T, lifetime time.Duration) *server.Server {
	t.Helper()
	s, err := server.New(server.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", ClientCertLifetime: lifetime,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("server did not stop within 30s")
		}
	})
	pool, err := api.CAPool(s.CACert())
	if err != nil {
		t.Fatal(err)
	}
	admin, err := api.NewClient(s.URL(), s.AdminToken(), &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for admin.Healthy(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("server not ready after 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	admin.CloseIdleConnections()
	return s
}

// deadURL is an https URL on which nothing listens.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "https://" + addr
}

// syncBuffer is a log sink the agent's goroutines write while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// An agent given two server URLs, the first dead, joins and long-polls
// through the second and reports it; with a certificate of a few seconds
// it renews it over mTLS, without the join token, at two thirds of its
// lifetime, again and again, and keeps working with each new one; once
// the operator removes its server, renewal is refused and the certificate
// on disk stays the last one issued.
func TestAgentFailsOverAndRenewsCertificate(t *testing.T) {
	const lifetime = 6 * time.Second
	s := realServer(t, lifetime)
	dead := deadURL(t)
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelInfo}))
	choice := agent.NewServerChoice([]string{dead, s.URL()}, log)
	pool, err := api.CAPool(s.CACert())
	if err != nil {
		t.Fatal(err)
	}
	boot, err := agent.NewFailover(choice, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	ev := &agenttest.Events{}
	dp := agenttest.NewDataplane(ev)
	guests := agenttest.NewGuests(ev)
	guests.Dataplane = dp
	dir := t.TempDir()
	a, err := agent.New(agent.Config{
		Name: "s1", StateDir: dir,
		Address: netip.MustParseAddr("198.18.0.1"), UnderlayIface: "eth0",
		Capacity:  spec.Resources{CPU: 4000, Memory: 8 << 30},
		JoinToken: s.JoinToken(), Bootstrap: boot,
		Connect: func(id *agent.Identity) (agent.ControlPlane, error) {
			tc, err := api.AgentTLS(id.CertPEM, id.KeyPEM, id.CAPEM)
			if err != nil {
				return nil, err
			}
			return agent.NewFailover(choice, tc)
		},
		Guests: guests, Dataplane: dp,
		PollWait: 500 * time.Millisecond, StatusInterval: 200 * time.Millisecond, RepairInterval: time.Hour,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	admin, err := api.NewClient(s.URL(), s.AdminToken(), &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.CloseIdleConnections()
	// The agent joined through the second URL and reports it.
	waitFor(t, 20*time.Second, "the agent to report the live server as its control plane", func() bool {
		sv, err := admin.GetServer(ctx, "s1")
		return err == nil && sv.ControlPlane == s.URL() && !sv.LastSeen.IsZero()
	})
	if choice.Current() != s.URL() {
		t.Fatalf("server in use %s, want %s", choice.Current(), s.URL())
	}
	if !strings.Contains(logs.String(), "control plane: now using another server") || !strings.Contains(logs.String(), dead) {
		t.Errorf("the failover from %s is not logged:\n%s", dead, logs.String())
	}

	// Renewals: each certificate is replaced before two thirds of its
	// lifetime have passed, by one that expires later.
	first := readCert(t, dir)
	var certs []*certInfo
	certs = append(certs, first)
	for len(certs) < 3 {
		prev := certs[len(certs)-1]
		waitFor(t, lifetime, "a renewed certificate", func() bool {
			c := readCert(t, dir)
			return c != nil && c.serial != prev.serial
		})
		c := readCert(t, dir)
		if !c.notAfter.After(prev.notAfter) {
			t.Fatalf("renewed certificate expires %s, not after %s", c.notAfter, prev.notAfter)
		}
		if time.Now().After(prev.notAfter) {
			t.Fatalf("certificate renewed only after it expired (%s)", prev.notAfter)
		}
		certs = append(certs, c)
	}
	if strings.Count(logs.String(), "joined the cluster") != 1 {
		t.Errorf("the agent joined again instead of renewing:\n%s", logs.String())
	}
	// It still works with the newest certificate: its reports arrive.
	seen := time.Now()
	waitFor(t, 10*time.Second, "a status report after the renewals", func() bool {
		sv, err := admin.GetServer(ctx, "s1")
		return err == nil && sv.LastSeen.After(seen)
	})

	// Removed: renewal is refused and the certificate stays as it was.
	if err := admin.RemoveServer(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	last := readCert(t, dir)
	waitFor(t, lifetime, "a refused renewal", func() bool {
		return strings.Contains(logs.String(), "certificate renewal failed") && strings.Contains(logs.String(), "removed by an operator")
	})
	if c := readCert(t, dir); c.serial != last.serial {
		t.Fatalf("a removed server got a new certificate")
	}
}

type certInfo struct {
	serial   string
	notAfter time.Time
}

func readCert(t *testing.T, dir string) *certInfo {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, agent.CertFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(dir, agent.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(b, key)
	if err != nil {
		return nil // between the key's write and the certificate's
	}
	c := pair.Leaf
	return &certInfo{serial: c.SerialNumber.Text(16), notAfter: c.NotAfter}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Failover: a connection error or a 5xx answer moves to the next server; a
// 4xx answer (the same from every server) does not; the status report
// names the server that took it.
func TestFailoverChoosesAnsweringServer(t *testing.T) {
	var hits [3]int
	var mu sync.Mutex
	handler := func(i, code int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			hits[i]++
			mu.Unlock()
			w.WriteHeader(code)
			if code >= 300 {
				w.Write([]byte(`{"error":"no"}`))
			}
		})
	}
	unavailable := httptest.NewTLSServer(handler(0, http.StatusServiceUnavailable))
	defer unavailable.Close()
	ok := httptest.NewTLSServer(handler(1, http.StatusNoContent))
	defer ok.Close()
	forbidden := httptest.NewTLSServer(handler(2, http.StatusForbidden))
	defer forbidden.Close()
	dead := deadURL(t)
	pool := ok.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	tc := &tls.Config{RootCAs: pool, InsecureSkipVerify: true} //nolint:gosec // httptest's certificates name 127.0.0.1 only; the test is about routing

	choice := agent.NewServerChoice([]string{dead, unavailable.URL, ok.URL}, slog.New(slog.NewTextHandler(t.Output(), nil)))
	f, err := agent.NewFailover(choice, tc)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ReportStatus(context.Background(), "s1", api.Status{Name: "s1"}); err != nil {
		t.Fatalf("with a dead and a 503 server before a live one: %v", err)
	}
	if choice.Current() != ok.URL || hits[0] != 1 || hits[1] != 1 {
		t.Fatalf("in use %s (want %s), hits %v", choice.Current(), ok.URL, hits)
	}
	// The server in use is asked first from then on.
	if err := f.ReportStatus(context.Background(), "s1", api.Status{Name: "s1"}); err != nil || hits[0] != 1 || hits[1] != 2 {
		t.Fatalf("second call: %v, hits %v: the answering server was not kept", err, hits)
	}

	// A 403 is the answer: no failover past it.
	choice = agent.NewServerChoice([]string{forbidden.URL, ok.URL}, nil)
	f, _ = agent.NewFailover(choice, tc)
	err = f.ReportStatus(context.Background(), "s1", api.Status{Name: "s1"})
	if api.HTTPStatus(err) != http.StatusForbidden || hits[1] != 2 {
		t.Fatalf("after a 403: %v, hits %v; want the 403 and no other server asked", err, hits)
	}

	// Every server down: one error naming them all.
	choice = agent.NewServerChoice([]string{dead, unavailable.URL}, nil)
	f, _ = agent.NewFailover(choice, tc)
	err = f.ReportStatus(context.Background(), "s1", api.Status{Name: "s1"})
	if err == nil || !strings.Contains(err.Error(), dead) || !strings.Contains(err.Error(), unavailable.URL) {
		t.Fatalf("all down: %v", err)
	}
}
