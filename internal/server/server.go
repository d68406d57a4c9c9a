// Package server is Corridor's control plane: the HTTPS JSON API under
// /v1, its authentication (admin token for users, mTLS client certificates
// signed by the server's own CA for agents), the long-poll of per-host
// desired state, and the controller that compiles stored apps and servers
// into placement and desired state. State lives in etcd (package store);
// several servers may share one etcd, all serve the API and one, elected,
// runs the controller.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/corridor-dev/corridor/internal/atomicfile"
	"github.com/corridor-dev/corridor/internal/store"
)

// Defaults.
const (
	DefaultListen           = "127.0.0.1:7443"
	DefaultHeartbeatTimeout = 30 * time.Second
	DefaultMaxWait          = 5 * time.Minute
	DefaultWait             = 60 * time.Second
	DefaultMaxBody          = 2 << 20
)

// Config configures a server.
type Config struct {
	// DataDir holds the embedded etcd, the token files and ca.crt.
	DataDir string
	// Listen is the HTTPS address (DefaultListen when empty; port 0 picks
	// a free port, see Server.Addr).
	Listen string
	// Advertise are extra host names or IPs for the server certificate
	// (the listen IP, localhost and 127.0.0.1 are always in it).
	Advertise []string
	// Etcd: Endpoints empty means embedded. DataDir and Logger are filled
	// from this Config.
	Etcd store.Config
	// HeartbeatTimeout: a server silent for longer is down and its tasks
	// are placed elsewhere.
	HeartbeatTimeout time.Duration
	// MaxWait caps a long-poll's wait.
	MaxWait time.Duration
	// MaxBody bounds request bodies (413 beyond).
	MaxBody int64
	// RequestTimeout bounds reading a request and writing its answer
	// (default 30s); long-polls extend it for themselves.
	RequestTimeout time.Duration
	// LeaderTTL is the controller's election lease in seconds (default
	// 5): how long a crashed leader holds on before another takes over.
	LeaderTTL int
	// KeyRotation, when positive, makes the controller rotate every
	// server's WireGuard key once it is older than this, one server at a
	// time (see docs/operations.md). Zero: only on request.
	KeyRotation time.Duration
	// RotationDrain is how long a hitless key rotation waits, once every
	// side routes by the device of the next phase, before it takes the
	// sessions of the device they left away (DefaultRotationDrain when
	// 0; see rotation.go).
	RotationDrain time.Duration
	// MoveTimeout, when positive, moves the tasks of a draining server
	// make-before-break (move.go), each phase of a move bounded by it; 0
	// moves them in one step (their old copy stops as the new one
	// starts). `corridor server` sets DefaultMoveTimeout.
	MoveTimeout time.Duration
	// ClientCertLifetime is how long the agents' certificates issued at
	// join and renewal are valid (default DefaultClientCertLifetime).
	// Agents renew theirs over mTLS at two thirds of it.
	ClientCertLifetime time.Duration
	// ArtifactMaxSize bounds one artifact pushed to the store
	// (DefaultArtifactMaxSize when 0; see artifacts.go).
	ArtifactMaxSize int64
	// ID names this server in the election (default host:pid).
	ID     string
	Logger *slog.Logger
}

// Server is one control-plane server. New prepares it (etcd, CA, tokens,
// listener); Run serves until its context ends and then releases it all.
type Server struct {
	cfg        Config
	log        *slog.Logger
	st         *store.Store
	ca         *authority
	signer     *stateSigner // signs desired states with the CA's key
	adminToken string
	joinToken  string
	hub        *hub
	revs       *revWatch // the store's revision, for the web console
	ctrl       *controller
	m          *metrics
	ln         net.Listener
	http       *http.Server
	started    time.Time
	closeOnce  sync.Once

	relayOnce sync.Once
	relay     tls.Certificate // made on first use: see relay.go
	relayErr  error
}

// New opens the store, makes or loads the CA and tokens, and binds the
// listener. Call Run, or Close if Run is never called.
func New(cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("server: a data directory is required (--data-dir)")
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if cfg.KeyRotation < 0 {
		return nil, fmt.Errorf("server: key rotation interval %s is negative (0 turns scheduled rotation off)", cfg.KeyRotation)
	}
	if cfg.RotationDrain < 0 {
		return nil, fmt.Errorf("server: key rotation drain %s is negative", cfg.RotationDrain)
	}
	if cfg.RotationDrain == 0 {
		cfg.RotationDrain = DefaultRotationDrain
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	if cfg.LeaderTTL <= 0 {
		cfg.LeaderTTL = 5
	}
	switch {
	case cfg.ClientCertLifetime == 0:
		cfg.ClientCertLifetime = DefaultClientCertLifetime
	case cfg.ClientCertLifetime < MinClientCertLifetime:
		return nil, fmt.Errorf("server: agent certificate lifetime %s is shorter than %s", cfg.ClientCertLifetime, MinClientCertLifetime)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ID == "" {
		h, _ := os.Hostname()
		cfg.ID = fmt.Sprintf("%s:%d", h, os.Getpid())
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: make data directory: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, m: newMetrics(), started: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ecfg := cfg.Etcd
	ecfg.DataDir = cfg.DataDir
	ecfg.Logger = cfg.Logger
	st, err := store.Open(ctx, ecfg)
	if err != nil {
		return nil, err
	}
	s.st = st
	if err := s.setup(ctx); err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) setup(ctx context.Context) error {
	var err error
	if s.ca, err = loadOrCreateCA(ctx, s.st); err != nil {
		return err
	}
	s.ca.clientValidity = s.cfg.ClientCertLifetime
	s.signer = newStateSigner(s.ca.key, s.m.reg)
	if err := atomicfile.Write(filepath.Join(s.cfg.DataDir, CACertFile), s.ca.certPEM, 0o644); err != nil {
		return fmt.Errorf("server: write ca.crt: %w", err)
	}
	if s.adminToken, err = ensureToken(ctx, s.st, s.cfg.DataDir, "admin", AdminTokenFile); err != nil {
		return err
	}
	if s.joinToken, err = ensureToken(ctx, s.st, s.cfg.DataDir, "join", JoinTokenFile); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("server: listen address %q: %w", s.cfg.Listen, err)
	}
	names := append([]string{"localhost", "127.0.0.1", "::1", host}, s.cfg.Advertise...)
	if host == "" || host == "0.0.0.0" || host == "::" {
		if hn, err := os.Hostname(); err == nil {
			names = append(names, hn)
		}
	}
	cert, err := s.ca.serverCert(names)
	if err != nil {
		return err
	}
	s.hub = newHub(s.st, s.log)
	s.revs = newRevWatch()
	s.ctrl = newController(s.st, s.hub, s.m, s.log, s.cfg.ID, s.cfg.LeaderTTL, s.cfg.HeartbeatTimeout)
	s.ctrl.keyRotation = s.cfg.KeyRotation
	s.ctrl.rotationDrain = s.cfg.RotationDrain
	s.ctrl.moveTimeout = s.cfg.MoveTimeout
	if s.cfg.MoveTimeout == 0 {
		s.ctrl.moveTimeout = -1
	}
	s.hub.onStatus = s.statusSeen
	s.hub.fanout = s.m.fanoutSeconds.Observe
	s.m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "corridor", Name: "fanout_pending_hosts",
		Help: "Hosts whose newest desired state (written while this server watched) their agent has not reported applied yet.",
	}, func() float64 { return float64(s.hub.pending()) }))
	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		// Users come with a token, agents with a certificate: both on one
		// port, so a client certificate is optional at the TLS layer and
		// required by the agent routes.
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  s.ca.pool,
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("server: listen on %s: %w", s.cfg.Listen, err)
	}
	s.ln = tls.NewListener(ln, tlsConf)
	s.http = &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: min(10*time.Second, s.cfg.RequestTimeout),
		ReadTimeout:       s.cfg.RequestTimeout,
		// Long-polls extend their own deadlines.
		WriteTimeout:   s.cfg.RequestTimeout,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the server's base URL.
func (s *Server) URL() string { return "https://" + s.Addr() }

// PublicURL is the URL that agents and users should be given: the first
// --advertise name with the listening port, or, on a wildcard listener
// without one, the loopback address (which the certificate names). The
// listen address itself may be 0.0.0.0 or ::, which no certificate names.
func (s *Server) PublicURL() string {
	host, port, err := net.SplitHostPort(s.Addr())
	if err != nil {
		return s.URL()
	}
	if len(s.cfg.Advertise) > 0 {
		host = s.cfg.Advertise[0]
	} else if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "https://" + net.JoinHostPort(host, port)
}

// CACert is the PEM of the CA that signs the server's and agents'
// certificates.
func (s *Server) CACert() []byte { return append([]byte(nil), s.ca.certPEM...) }

// AdminToken and JoinToken are the server's tokens, for tests and for
// embedding the server in a lab; the CLI prints only the files' paths.
func (s *Server) AdminToken() string { return s.adminToken }

// JoinToken is the token agents join with.
func (s *Server) JoinToken() string { return s.joinToken }

// Store is the server's store.
func (s *Server) Store() *store.Store { return s.st }

// IsLeader reports whether this server runs the controller now.
func (s *Server) IsLeader() bool { return s.ctrl.leader.Load() }

// Reconciles counts the controller's completed reconciles.
func (s *Server) Reconciles() int64 { return s.ctrl.reconciles.Load() }

// Run serves until ctx ends, then shuts down gracefully: waiting agents
// are answered at once, requests in flight get up to 5 seconds, the
// controller steps down and etcd (if embedded) stops.
func (s *Server) Run(ctx context.Context) error {
	defer s.Close()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); s.hub.run(rctx) }()
	go func() { defer wg.Done(); s.ctrl.mirror.Run(rctx) }()
	go func() { defer wg.Done(); s.revs.run(rctx, s.st, s.log) }()
	go func() { defer wg.Done(); s.ctrl.run(rctx) }()
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(s.ln) }()
	s.log.Info("corridor server listening", "url", s.URL(), "data_dir", s.cfg.DataDir, "embedded_etcd", s.st.Embedded())
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("server: serve: %w", err)
	}
	s.hub.close()
	s.revs.close()
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer scancel()
	_ = s.http.Shutdown(sctx)
	cancel()
	wg.Wait()
	s.log.Info("corridor server stopped")
	return err
}

// Close releases what New took, for a server whose Run was not called;
// Run calls it on its way out.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.ln != nil {
			s.ln.Close()
		}
		err = s.st.Close()
	})
	return err
}

// statusSeen is the hub's callback for each status: a host that comes
// back after being down needs a compile now, not at the next tick, and a
// host a move waits for may have done what the move waits for. Only a
// report with news (another applied revision or task list) can move a
// move on: a large fleet's heartbeats during a move do not each cost a
// reconcile.
func (s *Server) statusSeen(host string, news bool) {
	if s.ctrl.leader.Load() && (s.ctrl.anyDown() || news && s.ctrl.moveConcerns(host)) {
		s.ctrl.trigger()
	}
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, auth authKind, fn http.HandlerFunc) {
		mux.Handle(pattern, s.instrument(pattern, s.authenticate(auth, fn)))
	}
	h("GET /healthz", authNone, s.healthz)
	h("GET /readyz", authNone, s.readyz)
	mux.Handle("GET /metrics", s.instrument("GET /metrics", promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{})))

	h("POST /v1/join", authNone, s.join)
	h("GET /v1/agents/{name}/desired", authAgent, s.agentDesired)
	h("POST /v1/agents/{name}/desired", authAgent, s.agentDesiredWithStatus)
	h("POST /v1/agents/{name}/status", authAgent, s.agentStatus)
	h("POST /v1/agents/{name}/renew", authAgent, s.agentRenew)

	h("POST /v1/apps", authAdmin, s.timed("apply", s.applyApps))
	h("GET /v1/apps", authAdmin, s.listApps)
	h("GET /v1/apps/{name}", authAdmin, s.getApp)
	h("DELETE /v1/apps/{name}", authAdmin, s.timed("delete", s.deleteApp))
	h("POST /v1/apps/{name}/scale", authAdmin, s.timed("scale", s.scaleApp))
	h("POST /v1/plan", authAdmin, s.plan)
	h("GET /v1/servers", authAdmin, s.listServers)
	h("GET /v1/servers/{name}", authAdmin, s.getServer)
	h("DELETE /v1/servers/{name}", authAdmin, s.removeServer)
	h("POST /v1/servers/{name}/rotate-key", authAdmin, s.rotateKey)
	h("POST /v1/servers/{name}/drain", authAdmin, s.drainServer)
	h("POST /v1/servers/{name}/undrain", authAdmin, s.undrainServer)
	h("GET /v1/tasks", authAdmin, s.listTasks)
	h("GET /v1/paths", authAdmin, s.listPaths)
	h("GET /v1/events", authAdmin, s.listEvents)
	h("GET /v1/hosts/{name}/desired", authAdmin, s.hostDesired)
	h("GET /v1/backup", authAdmin, s.backup)
	h("POST /v1/servers/{name}/probe", authAdmin, s.probe)
	h("GET /v1/tasks/{task...}", authAdmin, s.taskSub)
	h("POST /v1/apps/{name}/verify-runs", authAdmin, s.postVerifyRun)
	h("GET /v1/apps/{name}/verify-runs", authAdmin, s.listVerifyRuns)
	h("GET /v1/verify-runs", authAdmin, s.listLastVerifyRuns)
	h("GET /v1/apps/{name}/report", authAdmin, s.appReport)
	h("POST /v1/artifacts", authAdmin, s.pushArtifact)
	h("GET /v1/artifacts", authAdmin, s.listArtifacts)
	h("GET /v1/artifacts/{sha256}", authNone, s.getArtifact) // an agent's certificate or the admin token: see getArtifact
	s.mountConsole(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s (see docs/api.md)", r.Method, r.URL.Path))
	})
	return mux
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintln(w, "ok")
}

// readyz: ready once the host mirror is loaded and etcd answers.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	select {
	case <-s.hub.ready:
	default:
		writeError(w, http.StatusServiceUnavailable, "not ready: loading state from etcd")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if _, err := s.st.Client().Get(ctx, s.st.Prefix()+"/ready"); err != nil {
		writeError(w, http.StatusServiceUnavailable, "not ready: etcd does not answer: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintln(w, "ready")
}

// statusRecorder remembers the status code for metrics.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (long-polls
// extend their write deadline).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *Server) instrument(route string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			// A panic in a handler is a bug, but one request's bug must
			// not take the control plane down.
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("handler panic", "route", route, "panic", fmt.Sprint(p))
				if rec.code == 0 {
					writeError(rec, http.StatusInternalServerError, "internal error")
				}
			}
			code := rec.code
			if code == 0 {
				code = http.StatusOK
			}
			s.m.requests.WithLabelValues(route, fmt.Sprint(code)).Inc()
		}()
		next.ServeHTTP(rec, r)
	})
}
