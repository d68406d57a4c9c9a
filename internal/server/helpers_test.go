package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

type testServer struct {
	*Server
	cancel context.CancelFunc
	done   chan error
	admin  *api.Client
	dir    string
}

func quietLogger() *slog.Logger {
	if os.Getenv("CORRIDOR_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startServer runs a server on a free loopback port with its own embedded
// etcd (unless cfg names endpoints) and stops it when the test ends.
func startServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{Server: s, cancel: cancel, done: make(chan error, 1), dir: cfg.DataDir}
	go func() { ts.done <- s.Run(ctx) }()
	ts.admin = ts.client(t, s.AdminToken(), nil)
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := ts.admin.Healthy(context.Background())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) stop() {
	select {
	case <-ts.done:
		return
	default:
	}
	ts.cancel()
	select {
	case <-ts.done:
	case <-time.After(30 * time.Second):
		panic("server did not stop within 30s")
	}
	ts.done <- nil // later stops return at once
}

// client talks to the server trusting its CA, with token and optional
// client certificate.
func (ts *testServer) client(t testing.TB, token string, cert *tls.Certificate) *api.Client {
	t.Helper()
	c, err := ts.newClient(token, cert)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newClient is client for goroutines other than the test's own, which
// may not call t.Fatal.
func (ts *testServer) newClient(token string, cert *tls.Certificate) (*api.Client, error) {
	pool, err := api.CAPool(ts.CACert())
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return api.NewClient(ts.URL(), token, tc)
}

// testAgent is a joined server as an agent would hold it.
type testAgent struct {
	name string
	c    *api.Client
	req  api.JoinRequest
	tls  *tls.Config
}

func agentTLSOf(_ testing.TB, a *testAgent) *tls.Config { return a.tls }

func apiPool(ts *testServer) (*tls.Config, error) {
	pool, err := api.CAPool(ts.CACert())
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

func newCSR(name string) (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

func wgKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func joinRequest(name string, i int, labels map[string]string) (api.JoinRequest, []byte, error) {
	keyPEM, csrPEM, err := newCSR(name)
	if err != nil {
		return api.JoinRequest{}, nil, err
	}
	return api.JoinRequest{
		Name: name, CSR: string(csrPEM),
		Address:   fmt.Sprintf("198.18.%d.%d", 1+i/250, 1+i%250),
		Capacity:  spec.Resources{CPU: 4000, Memory: 8 << 30},
		Labels:    labels,
		PublicKey: wgKey(), WireGuardPort: 51820,
	}, keyPEM, nil
}

// join makes a server join and returns its mTLS client. Call it from the
// test's goroutine only (it fails the test); other goroutines use tryJoin.
func (ts *testServer) join(t testing.TB, name string, i int, labels map[string]string) *testAgent {
	t.Helper()
	a, err := ts.tryJoin(context.Background(), name, i, labels)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// tryJoin makes a server join once and returns its mTLS client.
func (ts *testServer) tryJoin(ctx context.Context, name string, i int, labels map[string]string) (*testAgent, error) {
	return joinAt(ctx, ts.URL(), ts.CACert(), ts.JoinToken(), name, i, labels)
}

// joinAt joins the server at url (whose CA is caPEM) once, as the agent
// does: a new key, a CSR, the join token.
func joinAt(ctx context.Context, url string, caPEM []byte, token, name string, i int, labels map[string]string) (*testAgent, error) {
	req, keyPEM, err := joinRequest(name, i, labels)
	if err != nil {
		return nil, err
	}
	req.Token = token
	pool, err := api.CAPool(caPEM)
	if err != nil {
		return nil, err
	}
	anon, err := api.NewClient(url, "", &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, err
	}
	// The join's connection is used once: without this it stays open
	// until the server's idle timeout, a second descriptor per host at
	// each end for the fleet benchmark.
	defer anon.CloseIdleConnections()
	resp, err := anon.Join(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", name, err)
	}
	tc, err := api.AgentTLS([]byte(resp.Certificate), keyPEM, []byte(resp.CA))
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", name, err)
	}
	c, err := api.NewClient(url, "", tc)
	if err != nil {
		return nil, err
	}
	return &testAgent{name: name, c: c, req: req, tls: tc}, nil
}

// eventually retries cond every 20 ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not true after %v (last: %s)", what, timeout, last)
}

func tasksOf(t testing.TB, c *api.Client, f api.Filter) []api.TaskInfo {
	t.Helper()
	ts, err := c.ListTasks(context.Background(), f)
	if err != nil {
		t.Fatalf("list tasks: %v", err)
	}
	return ts
}

// shopYAML is the README's example app: web -> app plain, app -> db
// encrypted.
var shopYAML = string(examples.Shop)

// oneClassApp is an app of one class with n tasks, optionally pinned to
// servers carrying zone=zone.
func oneClassApp(name string, n int, zone string) string {
	pin := ""
	if zone != "" {
		pin = "    placement:\n      labels:\n        zone: " + zone + "\n"
	}
	return fmt.Sprintf(`apiVersion: corridor/v1
kind: App
name: %s
classes:
  - name: c
    tasks: %d
    guest:
      runtime: netns
      command: [sleep, infinity]
    resources:
      cpu: 10m
      memory: 4Mi
%s`, name, n, pin)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// settle waits until the controller has nothing left to do: no reconcile
// asked for and none completed for 400 ms. Tests that assert that a host
// gets no new revision use it, so that a reconcile left over from a join
// on a slow machine is not taken for one the test caused.
func (ts *testServer) settle(t testing.TB) {
	t.Helper()
	last, since := ts.Reconciles(), time.Now()
	eventually(t, 20*time.Second, "controller settled", func() (bool, string) {
		if n := ts.Reconciles(); n != last || len(ts.ctrl.kick) > 0 {
			last, since = n, time.Now()
		}
		return time.Since(since) >= 400*time.Millisecond, fmt.Sprint(last, " reconciles")
	})
}

// reconcileOnce asks the controller for a reconcile and waits until one
// more has run.
func (ts *testServer) reconcileOnce(t *testing.T) {
	t.Helper()
	before := ts.ctrl.reconciles.Load()
	ts.ctrl.trigger()
	eventually(t, 20*time.Second, "a reconcile", func() (bool, string) {
		return ts.ctrl.reconciles.Load() > before, fmt.Sprint(ts.ctrl.reconciles.Load())
	})
}

// storedDesired is host's desired state as stored in etcd, and its
// revision; nil and 0 when it has none.
func (ts *testServer) storedDesired(t *testing.T, host string) ([]byte, int64) {
	t.Helper()
	hosts, err := ts.st.Hosts(bg)
	if err != nil {
		t.Fatal(err)
	}
	if h := hosts[host]; h != nil {
		return h.Desired, h.DesiredRevision
	}
	return nil, 0
}
