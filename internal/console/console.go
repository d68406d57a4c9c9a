// Package console is Corridor's web console: a read-only view of the
// control plane (the app graph, the fleet, the paths between tasks, recent
// events, the last verify run per app) served by `corridor server` under
// /ui/ on the API's own listener, and kept live by server-sent events.
//
// The package owns the console's HTTP handlers, its login session and its
// embedded assets (HTML, CSS, JavaScript and the vendored D3, see
// scripts/vendor-js.sh); it knows nothing of etcd. The server hands it a
// Source: the state to show, and a wait on the store's revision.
//
// Login: the operator posts the admin token once; the console answers with
// an HttpOnly, Secure, SameSite=Strict cookie holding an expiring session
// MAC keyed by the token, never the token itself. Scripts cannot read it,
// the /v1 API does not accept it (a cookie can never change state), and
// changing admin.token ends every session. See docs/console.md.
package console

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// Prefix is where the console is mounted.
const Prefix = "/ui/"

// State is everything the console shows, at one store revision.
type State struct {
	// Revision is the store revision the state was read at (or after).
	Revision int64 `json:"revision"`
	// Now is the server's clock when the state was read: the page computes
	// ages (handshakes, keys, last seen) against it.
	Now     time.Time      `json:"now"`
	Apps    []api.App      `json:"apps"`
	Servers []Server       `json:"servers"`
	Tasks   []api.TaskInfo `json:"tasks"`
	Paths   []api.PathInfo `json:"paths"`
	// Drops are the firewall's drop counters as each host last reported
	// them.
	Drops  []HostDrops `json:"drops"`
	Events []api.Event `json:"events"`
	// Verify is the last verify run of each app, for the apps that have
	// one recorded; an app missing here has none ("no verify run
	// recorded").
	Verify []VerifyRun `json:"verify"`
}

// Server is a server of the fleet with the age of its WireGuard key.
type Server struct {
	api.Server
	// KeySince is when its current WireGuard key came into use, as far as
	// the control plane knows (its last rotation, else its join).
	KeySince time.Time `json:"keySince,omitzero"`
}

// HostDrops are one host's drop counters.
type HostDrops struct {
	Server string          `json:"server"`
	Drops  []api.DropCount `json:"drops"`
}

// VerifyRun is the summary of one verify run of an app.
type VerifyRun struct {
	App  string    `json:"app"`
	Time time.Time `json:"time"`
	// Passed: every check passed; Checks counts them, Failed the ones
	// that did not pass (failed or incomplete).
	Passed bool `json:"passed"`
	Checks int  `json:"checks"`
	Failed int  `json:"failed"`
	// Summary is one line per failed check, for the detail pane.
	Summary []string `json:"summary,omitempty"`
}

// Source is what the console reads: the server implements it.
type Source interface {
	// State reads the current state.
	State(ctx context.Context) (*State, error)
	// Wait returns as soon as the store's revision is above rev, with the
	// new revision; ok is false when ctx ended or the source is closing
	// (server shutdown) first.
	Wait(ctx context.Context, rev int64) (newRev int64, ok bool)
}

// Config configures a console.
type Config struct {
	Source Source
	// Token returns the admin token; it is asked at each login and each
	// request, so a changed token takes effect at once.
	Token func() string
	// Now is the clock (time.Now when nil), for tests.
	Now func() time.Time
	// SessionTTL is how long a login lasts (DefaultSessionTTL when zero).
	SessionTTL time.Duration
	// MinInterval is the shortest time between two states pushed to one
	// page (DefaultMinInterval when zero): a burst of heartbeats becomes
	// one update.
	MinInterval time.Duration
	// KeepAlive is the longest silence on the live stream
	// (DefaultKeepAlive when zero).
	KeepAlive time.Duration
	Logger    *slog.Logger
}

// Defaults.
const (
	DefaultSessionTTL  = 12 * time.Hour
	DefaultMinInterval = 250 * time.Millisecond
	DefaultKeepAlive   = 15 * time.Second
)

//go:embed assets
var assets embed.FS

// Console serves the web console.
type Console struct {
	cfg    Config
	static http.Handler
	log    *slog.Logger
}

// New makes a console.
func New(cfg Config) (*Console, error) {
	if cfg.Source == nil || cfg.Token == nil {
		return nil, fmt.Errorf("console: a Source and a Token function are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, fmt.Errorf("console: embedded assets: %w", err)
	}
	return &Console{
		cfg:    cfg,
		static: http.StripPrefix(Prefix+"static/", http.FileServer(http.FS(sub))),
		log:    cfg.Logger,
	}, nil
}

// Routes are the console's routes, as ServeMux patterns, for the server to
// mount (each with its own metrics label) on the API's mux.
func (c *Console) Routes() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"GET /ui":           c.redirectRoot,
		"GET /ui/{$}":       c.index,
		"GET /ui/login":     c.loginPage,
		"POST /ui/login":    c.login,
		"POST /ui/logout":   c.logout,
		"GET /ui/static/":   c.assets,
		"GET /ui/api/state": c.authed(c.state),
		"GET /ui/api/watch": c.authed(c.watch),
	}
}

// Handler serves every console route, for tests and for mounting the
// console alone.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	for p, h := range c.Routes() {
		mux.HandleFunc(p, h)
	}
	return mux
}

// secure sets the headers every console answer carries: no script, style
// or connection from elsewhere (the page works offline, and an injected
// script tag loads nothing), no framing, no caching of data.
func secure(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin") // not no-referrer: Chromium then posts forms with Origin: null
	h.Set("X-Frame-Options", "DENY")
}

func (c *Console) redirectRoot(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, Prefix, http.StatusSeeOther)
}

func (c *Console) index(w http.ResponseWriter, r *http.Request) {
	if !c.validSession(r) {
		http.Redirect(w, r, Prefix+"login", http.StatusSeeOther)
		return
	}
	page, err := assets.ReadFile("assets/index.html")
	if err != nil {
		http.Error(w, "console: index.html missing from the build", http.StatusInternalServerError)
		return
	}
	secure(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(page)
}

func (c *Console) assets(w http.ResponseWriter, r *http.Request) {
	secure(w)
	// The assets change only with the binary; revalidate on each load so
	// an upgraded server never runs an old script.
	w.Header().Set("Cache-Control", "no-cache")
	c.static.ServeHTTP(w, r)
}

func (c *Console) state(w http.ResponseWriter, r *http.Request) {
	st, err := c.cfg.Source.State(r.Context())
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, api.Error{Error: "read state: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	secure(w)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// watch streams the state as server-sent events: one "state" event at
// once, then one each time the store's revision moves (no closer together
// than MinInterval), and a comment line at least every KeepAlive.
func (c *Console) watch(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	secure(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	ctx := r.Context()
	var last int64 = -1
	var sent time.Time
	for {
		_ = rc.SetWriteDeadline(time.Now().Add(c.cfg.KeepAlive + 30*time.Second))
		st, err := c.cfg.Source.State(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			b, _ := json.Marshal(api.Error{Error: "read state: " + err.Error()})
			fmt.Fprintf(w, "event: failure\ndata: %s\n\n", b)
		} else {
			b, err := json.Marshal(st)
			if err != nil {
				c.log.Error("console: encode state", "err", err)
				return
			}
			fmt.Fprintf(w, "event: state\nid: %d\ndata: %s\n\n", st.Revision, b)
			last = st.Revision
		}
		if rc.Flush() != nil {
			return
		}
		sent = time.Now()
		// Wait for the next revision, with keep-alives.
		for {
			wctx, cancel := context.WithTimeout(ctx, c.cfg.KeepAlive)
			rev, ok := c.cfg.Source.Wait(wctx, last)
			timedOut := wctx.Err() != nil && ctx.Err() == nil
			cancel()
			if ok && rev > last {
				break
			}
			if !timedOut {
				return // the page left, or the server is closing
			}
			_ = rc.SetWriteDeadline(time.Now().Add(c.cfg.KeepAlive + 30*time.Second))
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		}
		if d := c.cfg.MinInterval - time.Since(sent); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
	}
}
