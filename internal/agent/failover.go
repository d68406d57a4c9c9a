package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// ServerChoice is which of the control plane's servers (`--server`, one URL
// each) the agent talks to. It outlives the clients made from it: a
// renewed certificate makes new clients that keep talking to the server in
// use.
type ServerChoice struct {
	urls []string
	log  *slog.Logger

	mu   sync.Mutex
	cur  int
	used bool // a server answered once: the first is logged
}

// NewServerChoice starts on the first of urls.
func NewServerChoice(urls []string, log *slog.Logger) *ServerChoice {
	if log == nil {
		log = slog.Default()
	}
	return &ServerChoice{urls: urls, log: log}
}

// Current is the URL of the server in use.
func (s *ServerChoice) Current() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.urls[s.cur]
}

func (s *ServerChoice) index() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// use records that the server at i answered; a change is logged.
func (s *ServerChoice) use(i int, why error) {
	s.mu.Lock()
	prev, first := s.cur, !s.used
	s.cur, s.used = i, true
	s.mu.Unlock()
	if first {
		s.log.Info("control plane: using server", "server", s.urls[i], "servers", strings.Join(s.urls, ","))
	}
	if prev != i {
		s.log.Warn("control plane: now using another server", "server", s.urls[i], "previous", s.urls[prev], "because", why)
	}
}

// Failover is a control-plane client over every server of a ServerChoice:
// each call goes to the server in use, and when that one cannot answer (no
// connection, a timeout, or a 5xx answer such as a server whose etcd has
// no leader or which is stopping) to the next, once round the list. An
// answer the other servers would give as well (4xx: a refused token, a
// removed server) ends the call. It implements ControlPlane and Renewer.
type Failover struct {
	choice  *ServerChoice
	clients []*api.Client
}

// NewFailover makes one client per server URL of choice, with tlsConf.
func NewFailover(choice *ServerChoice, tlsConf *tls.Config) (*Failover, error) {
	f := &Failover{choice: choice}
	for _, u := range choice.urls {
		c, err := api.NewClient(u, "", tlsConf)
		if err != nil {
			return nil, fmt.Errorf("--server: %w", err)
		}
		f.clients = append(f.clients, c)
	}
	return f, nil
}

// Current is the URL of the server in use.
func (f *Failover) Current() string { return f.choice.Current() }

// CloseIdleConnections releases every client's idle connections.
func (f *Failover) CloseIdleConnections() {
	for _, c := range f.clients {
		c.CloseIdleConnections()
	}
}

// failsOver reports whether another server may answer where this one did
// not.
func failsOver(err error) bool {
	code := api.HTTPStatus(err)
	return code == 0 || code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout
}

func call[T any](ctx context.Context, f *Failover, fn func(*api.Client) (T, error)) (T, error) {
	n := len(f.clients)
	start := f.choice.index()
	var failed []string
	var last error
	for k := range n {
		i := (start + k) % n
		v, err := fn(f.clients[i])
		if err == nil || !failsOver(err) || ctx.Err() != nil {
			if err == nil || !failsOver(err) {
				f.choice.use(i, last)
			}
			if err != nil && len(failed) > 0 {
				err = fmt.Errorf("%w (after %s failed)", err, strings.Join(failed, ", "))
			}
			return v, err
		}
		failed = append(failed, f.choice.urls[i])
		last = err
	}
	var zero T
	if n == 1 {
		return zero, last
	}
	return zero, fmt.Errorf("no control-plane server answered (tried %s): %w", strings.Join(failed, ", "), last)
}

// Join implements ControlPlane.
func (f *Failover) Join(ctx context.Context, req api.JoinRequest) (api.JoinResponse, error) {
	return call(ctx, f, func(c *api.Client) (api.JoinResponse, error) { return c.Join(ctx, req) })
}

// Desired implements ControlPlane.
func (f *Failover) Desired(ctx context.Context, name string, index int64, wait time.Duration) (api.DesiredState, error) {
	return call(ctx, f, func(c *api.Client) (api.DesiredState, error) { return c.Desired(ctx, name, index, wait) })
}

// DesiredWithStatus implements statusPoller: the long-poll that carries
// the status, to the server in use (or the next that answers).
func (f *Failover) DesiredWithStatus(ctx context.Context, name string, index int64, wait time.Duration, st api.Status, stored func()) (api.DesiredState, error) {
	return call(ctx, f, func(c *api.Client) (api.DesiredState, error) {
		st.ControlPlane = c.BaseURL()
		return c.DesiredWithStatus(ctx, name, index, wait, st, stored)
	})
}

// ReportStatus implements ControlPlane.
func (f *Failover) ReportStatus(ctx context.Context, name string, st api.Status) error {
	_, err := call(ctx, f, func(c *api.Client) (struct{}, error) {
		st.ControlPlane = c.BaseURL()
		return struct{}{}, c.ReportStatus(ctx, name, st)
	})
	return err
}

// Renew implements Renewer.
func (f *Failover) Renew(ctx context.Context, name string, req api.RenewRequest) (api.JoinResponse, error) {
	return call(ctx, f, func(c *api.Client) (api.JoinResponse, error) { return c.Renew(ctx, name, req) })
}

// FetchArtifact implements artifactFetcher: corridor:// artifacts are
// fetched with the agent's certificate from the server in use first, then
// from the others. Unlike the calls above, a 4xx moves on too: each
// control-plane server serves only what was pushed to it (docs/operations.md,
// "Delivering task programs"), so a 404 from one is not the answer of all.
func (f *Failover) FetchArtifact(ctx context.Context, sum string) (io.ReadCloser, error) {
	n := len(f.clients)
	start := f.choice.index()
	var last error
	for k := range n {
		rc, err := f.clients[(start+k)%n].FetchArtifact(ctx, sum)
		if err == nil {
			return rc, nil
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, last
}

// The agent finds the artifact fetcher by this interface on its control
// plane client (useArtifactStore): without it corridor:// programs could
// never be fetched, and nothing else would say so.
var _ artifactFetcher = (*Failover)(nil)

// Likewise for the status carried by the long-poll.
var _ statusPoller = (*Failover)(nil)
