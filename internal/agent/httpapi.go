package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

// LogsFunc writes the last lines of a task's log to w, then, when follow
// is set, what is appended until ctx is done. It wraps fs.ErrNotExist when
// the task has no log on this host.
type LogsFunc func(ctx context.Context, task string, lines int, follow bool, w io.Writer) error

// ProbeFunc runs one probe (see api.ProbeRequest). The request it gets is
// checked and completed (capture interface and timeout set).
type ProbeFunc func(ctx context.Context, req api.ProbeRequest) (api.ProbeResult, error)

// Limits of the local API's parameters.
const (
	DefaultLogLines     = 100
	MaxLogLines         = 100000
	DefaultProbeTimeout = 3 * time.Second
	MaxProbeTimeout     = time.Minute
	// MinMarkerLen keeps a probe marker long enough that finding it on the
	// underlay by chance is out of the question.
	MinMarkerLen = 8
	maxProbeBody = 64 << 10
)

// APITLSConfig is the TLS configuration of the agent's local API: the
// agent's own certificate, and only client certificates that the cluster
// CA signed for the Corridor server (CN "corridor-server"). The server
// proxies user requests (logs, probes) to agents; nobody else may call.
func APITLSConfig(id *Identity) *tls.Config {
	return apiTLSConfig(func() *Identity { return id })
}

// apiTLSConfig serves the certificate of the identity current at each
// handshake (a renewal replaces it).
func apiTLSConfig(current func() *Identity) *tls.Config {
	id := current()
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c := current().TLSCertificate()
			return &c, nil
		},
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  id.CAPool(),
		// Runs after the chain is verified against ClientCAs.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("agent API: client certificate required")
			}
			if cn := cs.PeerCertificates[0].Subject.CommonName; cn != ServerCommonName {
				return fmt.Errorf("agent API: client %q refused: only %q may call agents", cn, ServerCommonName)
			}
			return nil
		},
	}
}

// serveAPI serves the local API on the configured listener until ctx is
// done.
func (a *Agent) serveAPI(ctx context.Context) {
	srv := &http.Server{
		Handler:           a.Handler(),
		TLSConfig:         apiTLSConfig(a.identity),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx) //nolint:errcheck // best effort at exit
	}()
	a.log.Info("local API listening", "addr", a.cfg.Listener.Addr().String())
	if err := srv.ServeTLS(a.cfg.Listener, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Error("local API stopped", "err", err)
	}
}

// serveMetrics serves GET /metrics, and nothing else, in plain HTTP on the
// metrics listener until ctx is done: what Prometheus scrapes. It holds
// no secret and accepts no input; see docs/metrics.md for why it is a
// listener of the agent's own, off unless asked for.
func (a *Agent) serveMetrics(ctx context.Context) {
	srv := &http.Server{
		Handler:           a.MetricsHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx) //nolint:errcheck // best effort at exit
	}()
	a.log.Info("metrics listening (plain HTTP)", "addr", a.cfg.MetricsListener.Addr().String())
	if err := srv.Serve(a.cfg.MetricsListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Error("metrics listener stopped", "err", err)
	}
}

// MetricsHandler serves GET /metrics alone.
func (a *Agent) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	return mux
}

// Handler is the local API, without TLS (APITLSConfig adds the auth):
//
//	GET  /v1/status                       the current api.Status
//	GET  /v1/logs/{task}?lines=N&follow=1 a task's log, streamed with follow
//	POST /v1/probe                        api.ProbeRequest -> api.ProbeResult
//	GET  /metrics                         Prometheus metrics
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Status(r.Context()))
	})
	mux.HandleFunc("GET /v1/logs/{task...}", a.handleLogs)
	mux.HandleFunc("POST /v1/probe", a.handleProbe)
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	return mux
}

func (a *Agent) handleLogs(w http.ResponseWriter, r *http.Request) {
	if a.cfg.Logs == nil {
		writeError(w, http.StatusNotImplemented, "this agent serves no logs")
		return
	}
	task := r.PathValue("task")
	lines := DefaultLogLines
	if s := r.URL.Query().Get("lines"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > MaxLogLines {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("lines: %q is not a number from 0 to %d", s, MaxLogLines))
			return
		}
		lines = n
	}
	follow, err := parseBool(r.URL.Query().Get("follow"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "follow: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	fw := &flushWriter{w: w}
	if f, ok := w.(http.Flusher); ok && follow {
		fw.f = f
	}
	err = a.cfg.Logs(r.Context(), task, lines, follow, fw)
	switch {
	case err == nil, r.Context().Err() != nil:
	case fw.wrote:
		// Too late for a status code; the client sees a short stream.
		a.log.Warn("log stream ended with an error", "task", task, "err", err)
	case errors.Is(err, fs.ErrNotExist):
		writeError(w, http.StatusNotFound, fmt.Sprintf("task %s has no log on %s", task, a.cfg.Name))
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func (a *Agent) handleProbe(w http.ResponseWriter, r *http.Request) {
	if a.cfg.Probe == nil {
		writeError(w, http.StatusNotImplemented, "this agent cannot probe")
		return
	}
	var req api.ProbeRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxProbeBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "probe request: "+err.Error())
		return
	}
	if err := a.checkProbe(&req); err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, errNotHere) {
			status = http.StatusNotFound
		}
		writeError(w, status, err.Error())
		return
	}
	res, err := a.cfg.Probe(r.Context(), req)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "probe: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, res)
}

var errNotHere = errors.New("not on this host")

// checkProbe validates req, naming the bad field, and fills its defaults.
func (a *Agent) checkProbe(req *api.ProbeRequest) error {
	if req.FromTask == "" {
		return errors.New("fromTask: required")
	}
	if !a.hasGuest(req.FromTask) {
		return fmt.Errorf("fromTask: task %s does not run on %s: %w", req.FromTask, a.cfg.Name, errNotHere)
	}
	if _, err := netip.ParseAddr(req.ToAddr); err != nil {
		return fmt.Errorf("toAddr: %q is not an IP address", req.ToAddr)
	}
	if req.Network != spec.ProtoTCP && req.Network != spec.ProtoUDP {
		return fmt.Errorf("network: %q is neither tcp nor udp", req.Network)
	}
	if req.Port < 1 || req.Port > 65535 {
		return fmt.Errorf("port: %d is not from 1 to 65535", req.Port)
	}
	if len(req.Marker) < MinMarkerLen {
		return fmt.Errorf("marker: %d bytes, at least %d needed", len(req.Marker), MinMarkerLen)
	}
	switch {
	case req.Timeout < 0 || req.Timeout > MaxProbeTimeout:
		return fmt.Errorf("timeout: %s is not from 0 to %s", req.Timeout, MaxProbeTimeout)
	case req.Timeout == 0:
		req.Timeout = DefaultProbeTimeout
	}
	if req.CaptureIface == "" {
		req.CaptureIface = a.cfg.UnderlayIface
	}
	return nil
}

// LocalGuest reports whether addr is a guest of this host in the current
// desired state (see Prober.LocalAddr).
func (a *Agent) LocalGuest(addr netip.Addr) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.target == nil {
		return false
	}
	for _, g := range a.target.State.Guests {
		if g.Address == addr {
			return true
		}
	}
	return false
}

func (a *Agent) hasGuest(task string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.target == nil {
		return false
	}
	for _, g := range a.target.State.Guests {
		if g.Task == task {
			return true
		}
	}
	return false
}

// flushWriter flushes after every write, so that a followed log reaches
// the client line by line.
type flushWriter struct {
	w     io.Writer
	f     http.Flusher
	wrote bool
}

func (fw *flushWriter) Write(p []byte) (int, error) {
	n, err := fw.w.Write(p)
	if n > 0 {
		fw.wrote = true
	}
	if fw.f != nil {
		fw.f.Flush()
	}
	return n, err
}

func parseBool(s string) (bool, error) {
	switch s {
	case "", "0", "false":
		return false, nil
	case "1", "true":
		return true, nil
	}
	return false, fmt.Errorf("%q is not 0, 1, true or false", s)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v) //nolint:errchkjson // the client went away
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, api.Error{Error: msg})
}
