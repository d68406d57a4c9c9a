package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultTimeout bounds every request but the long-poll, whose bound is
// its wait plus DefaultTimeout.
const DefaultTimeout = 30 * time.Second

// maxAnswer bounds what the client reads from one answer.
const maxAnswer = 64 << 20

// StatusError is a non-2xx answer: the HTTP status and the server's
// api.Error.
type StatusError struct {
	Code    int
	Message string
	Details []string
}

func (e *StatusError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	s := fmt.Sprintf("%s (HTTP %d)", msg, e.Code)
	for _, d := range e.Details {
		s += "\n  " + d
	}
	return s
}

// HTTPStatus returns the HTTP status of an error from the client, or 0.
func HTTPStatus(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// Client talks to a Corridor server. Users give it the admin token;
// agents give it no token and a TLS config with their client certificate
// (AgentTLS).
type Client struct {
	base  string
	token string
	http  *http.Client
}

// NewClient returns a client for baseURL (https://host:port). tlsConf
// may be nil (system roots, no client certificate).
func NewClient(baseURL, token string, tlsConf *tls.Config) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("api: server URL %q: want https://host:port", baseURL)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	tr.MaxIdleConnsPerHost = 4
	return &Client{base: u.String(), token: token, http: &http.Client{Transport: tr}}, nil
}

// CloseIdleConnections releases the client's idle connections.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// BaseURL is the server URL the client talks to.
func (c *Client) BaseURL() string { return c.base }

// AgentTLS is an agent's TLS config after joining: its own key and the
// certificate the server signed, and the server's CA as the only root.
func AgentTLS(certPEM, keyPEM, caPEM []byte) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("api: agent certificate and key: %w", err)
	}
	roots, err := CAPool(caPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, RootCAs: roots}, nil
}

// CAPool parses PEM certificates into a pool.
func CAPool(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("api: no PEM certificate in the CA data")
	}
	return pool, nil
}

// request is one call: body is JSON-encoded unless raw is set.
type request struct {
	method, path string
	query        url.Values
	body         any
	raw          []byte
	contentType  string
	header       http.Header
	timeout      time.Duration
	// answered, when set, is called with the answer's status code and
	// headers as soon as they arrive, before its body is read.
	answered func(code int, h http.Header)
}

// do sends req and decodes a 2xx answer into out (if not nil). It returns
// the answer's headers.
func (c *Client) do(ctx context.Context, req request, out any) (http.Header, error) {
	if req.timeout == 0 {
		req.timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, req.timeout)
	defer cancel()
	var body io.Reader
	ct := req.contentType
	switch {
	case req.raw != nil:
		body = bytes.NewReader(req.raw)
	case req.body != nil:
		b, err := json.Marshal(req.body)
		if err != nil {
			return nil, fmt.Errorf("api: encode request: %w", err)
		}
		body = bytes.NewReader(b)
		ct = "application/json"
	}
	u := c.base + req.path
	if len(req.query) > 0 {
		u += "?" + req.query.Encode()
	}
	hr, err := http.NewRequestWithContext(ctx, req.method, u, body)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	for k, v := range req.header {
		hr.Header[k] = v
	}
	if ct != "" {
		hr.Header.Set("Content-Type", ct)
	}
	hr.Header.Set("Accept", "application/json")
	if c.token != "" {
		hr.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(hr)
	if err != nil && closedIdle(err) && (body == nil || hr.GetBody != nil) {
		// The server had closed this pooled connection before it read the
		// request: net/http's server applies its header timeout to a new
		// connection's first request from the moment it is accepted, so a
		// connection the transport dialed but parked idle dies after that
		// timeout. Nothing reached the server, so sending it again on a
		// new connection is safe whatever the method (the transport replays
		// only GET-like requests by itself).
		if hr.GetBody != nil {
			hr.Body, err = hr.GetBody()
		}
		if err == nil {
			resp, err = c.http.Do(hr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("api: %s %s: %w", req.method, req.path, err)
	}
	defer resp.Body.Close()
	if req.answered != nil {
		req.answered(resp.StatusCode, resp.Header)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return resp.Header, fmt.Errorf("api: %s %s: read answer: %w", req.method, req.path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.Header, statusError(resp.StatusCode, data)
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.Header, fmt.Errorf("api: %s %s: decode answer: %w", req.method, req.path, err)
		}
	}
	return resp.Header, nil
}

func path(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteString("/")
		b.WriteString(url.PathEscape(p))
	}
	return b.String()
}

// HeaderAllowPending is the request header of ApplyOptions.AllowPending.
const HeaderAllowPending = "X-Corridor-Allow-Pending"

// ApplyOptions refine ApplyApp.
type ApplyOptions struct {
	// File names the source in error messages ("app.yaml:12: ...").
	File string
	// IfMatch, when not nil, applies only if the app is still at that
	// revision (0: only if it does not exist): 409 otherwise.
	IfMatch *int64
	// AllowPending stores apps even when the apply makes tasks pending
	// (no server can take them now); without it such an apply is refused
	// (422) and nothing is stored.
	AllowPending bool
}

// ApplyApp stores the app(s) of a YAML stream.
func (c *Client) ApplyApp(ctx context.Context, yamlDoc []byte, opts ...ApplyOptions) (ApplyResult, error) {
	var res ApplyResult
	_, err := c.do(ctx, c.appRequest("/v1/apps", yamlDoc, opts), &res)
	return res, err
}

// Plan is a dry run of ApplyApp.
func (c *Client) Plan(ctx context.Context, yamlDoc []byte, opts ...ApplyOptions) (PlanResult, error) {
	var res PlanResult
	_, err := c.do(ctx, c.appRequest("/v1/plan", yamlDoc, opts), &res)
	return res, err
}

func (c *Client) appRequest(p string, doc []byte, opts []ApplyOptions) request {
	req := request{method: http.MethodPost, path: p, raw: doc, contentType: "application/yaml", header: http.Header{}}
	if doc == nil {
		req.raw = []byte{}
	}
	for _, o := range opts {
		if o.File != "" {
			req.header.Set("X-Corridor-File", o.File)
		}
		if o.IfMatch != nil {
			req.header.Set("If-Match", strconv.FormatInt(*o.IfMatch, 10))
		}
		if o.AllowPending {
			req.header.Set(HeaderAllowPending, "true")
		}
	}
	return req
}

// ListApps lists the stored apps.
func (c *Client) ListApps(ctx context.Context) ([]App, error) {
	var out []App
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/apps"}, &out)
	return out, err
}

// GetApp reads one app.
func (c *Client) GetApp(ctx context.Context, name string) (App, error) {
	var out App
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/apps" + path(name)}, &out)
	return out, err
}

// DeleteApp deletes an app; its tasks are stopped.
func (c *Client) DeleteApp(ctx context.Context, name string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: "/v1/apps" + path(name)}, nil)
	return err
}

// Scale sets the task count of one class.
func (c *Client) Scale(ctx context.Context, app, class string, tasks int) (ApplyResult, error) {
	var out ApplyResult
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/apps" + path(app, "scale"), body: ScaleRequest{Class: class, Tasks: tasks}}, &out)
	return out, err
}

// ListServers lists the servers.
func (c *Client) ListServers(ctx context.Context) ([]Server, error) {
	var out []Server
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/servers"}, &out)
	return out, err
}

// GetServer reads one server.
func (c *Client) GetServer(ctx context.Context, name string) (Server, error) {
	var out Server
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/servers" + path(name)}, &out)
	return out, err
}

// RemoveServer removes (revokes) a server.
func (c *Client) RemoveServer(ctx context.Context, name string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: "/v1/servers" + path(name)}, nil)
	return err
}

// RotateKey asks the agent of server name for a new WireGuard key pair
// (see docs/operations.md) and returns the server as it now stands.
func (c *Client) RotateKey(ctx context.Context, name string) (Server, error) {
	var out Server
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/servers" + path(name) + "/rotate-key"}, &out)
	return out, err
}

// Filter narrows ListTasks and ListPaths; empty fields match everything.
type Filter struct {
	App, Server, Task string
	// ServerPairs asks ListPaths for the encrypted paths between two
	// servers only, one per (app, source server, destination server)
	// with its Count: what a wait for handshakes needs, without listing
	// the 250,000 paths of two classes of 500 tasks. A server of an
	// earlier version lists every path (Count 0).
	ServerPairs bool
}

func (f Filter) query() url.Values {
	q := url.Values{}
	if f.App != "" {
		q.Set("app", f.App)
	}
	if f.Server != "" {
		q.Set("server", f.Server)
	}
	if f.Task != "" {
		q.Set("task", f.Task)
	}
	if f.ServerPairs {
		q.Set("pairs", "1")
	}
	return q
}

// ListTasks lists placed tasks with reasons and live status.
func (c *Client) ListTasks(ctx context.Context, f Filter) ([]TaskInfo, error) {
	var out []TaskInfo
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/tasks", query: f.query()}, &out)
	return out, err
}

// ListPaths lists compiled paths with live peer status.
func (c *Client) ListPaths(ctx context.Context, f Filter) ([]PathInfo, error) {
	var out []PathInfo
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/paths", query: f.query()}, &out)
	return out, err
}

// ListEvents returns up to limit of the newest events, oldest first
// (limit 0: the server's default of 100).
func (c *Client) ListEvents(ctx context.Context, limit int) ([]Event, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out []Event
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/events", query: q}, &out)
	return out, err
}

// HostDesired is the admin's view of a host's desired state.
func (c *Client) HostDesired(ctx context.Context, name string) (DesiredState, error) {
	var out DesiredState
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/hosts" + path(name, "desired")}, &out)
	return out, err
}

// Join registers a server with the join token in req and returns its
// signed certificate.
func (c *Client) Join(ctx context.Context, req JoinRequest) (JoinResponse, error) {
	var out JoinResponse
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/join", body: req}, &out)
	return out, err
}

// Renew asks for a new client certificate for the agent name, over the
// mTLS connection of its current one (no join token).
func (c *Client) Renew(ctx context.Context, name string, req RenewRequest) (JoinResponse, error) {
	var out JoinResponse
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/agents" + path(name, "renew"), body: req}, &out)
	return out, err
}

// Desired long-polls a host's desired state: it returns as soon as the
// revision differs from index, or after wait with the same revision (the
// caller compares Revision with index). wait 0 answers at once.
func (c *Client) Desired(ctx context.Context, name string, index int64, wait time.Duration) (DesiredState, error) {
	q := url.Values{}
	q.Set("index", strconv.FormatInt(index, 10))
	q.Set("wait", wait.String())
	var out DesiredState
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/agents" + path(name, "desired"), query: q, timeout: wait + DefaultTimeout}, &out)
	return out, err
}

// HeaderStatus is the header of a long-poll answer that says the status
// the request carried is stored (value "stored"). The server sends it
// before the long-poll waits.
const HeaderStatus = "X-Corridor-Status"

// ErrPollStatusUnsupported: the server does not take a status with the
// long-poll (a server older than this protocol answers 404 or 405 to a
// POST there). Nothing was stored: report the status with ReportStatus
// and poll with Desired.
var ErrPollStatusUnsupported = errors.New("api: the server does not take a status with the long-poll (an older server); report it separately")

// DesiredWithStatus is Desired carrying the host's status: the server
// stores st as ReportStatus would, then long-polls. stored, if not nil, is
// called once the server has said that st is stored, which it does before
// it waits: a long-poll cut short after that still delivered the report.
// A server that does not know this request gives an error matching
// ErrPollStatusUnsupported.
func (c *Client) DesiredWithStatus(ctx context.Context, name string, index int64, wait time.Duration, st Status, stored func()) (DesiredState, error) {
	q := url.Values{}
	q.Set("index", strconv.FormatInt(index, 10))
	q.Set("wait", wait.String())
	var out DesiredState
	said := false
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/agents" + path(name, "desired"), query: q, body: st,
		timeout: wait + DefaultTimeout, answered: func(code int, h http.Header) {
			if code == http.StatusOK && h.Get(HeaderStatus) == "stored" {
				said = true
				if stored != nil {
					stored()
				}
			}
		}}, &out)
	if code := HTTPStatus(err); code == http.StatusNotFound || code == http.StatusMethodNotAllowed {
		return out, fmt.Errorf("%w: %w", ErrPollStatusUnsupported, err)
	}
	if err == nil && !said {
		// A 2xx without the header: something between agent and server
		// that answered for a server it does not understand.
		return out, fmt.Errorf("%w: the answer does not say the status was stored", ErrPollStatusUnsupported)
	}
	return out, err
}

// ReportStatus sends a heartbeat with the host's status.
func (c *Client) ReportStatus(ctx context.Context, name string, st Status) error {
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/agents" + path(name, "status"), body: st}, nil)
	return err
}

// Healthy asks /readyz.
func (c *Client) Healthy(ctx context.Context) error {
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/readyz"}, nil)
	return err
}

// Backup streams an etcd snapshot of the server's whole state to w and
// returns its size.
func (c *Client) Backup(ctx context.Context, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/backup", nil)
	if err != nil {
		return 0, fmt.Errorf("api: %w", err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("api: GET /v1/backup: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, readStatusError(resp)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("api: read backup: %w", err)
	}
	return n, nil
}

// Probe asks the server to run a probe on the named server's agent (see
// ProbeRequest): the server relays it to the agent's local API.
func (c *Client) Probe(ctx context.Context, server string, req ProbeRequest) (ProbeResult, error) {
	var out ProbeResult
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/servers" + path(server, "probe"), body: req, timeout: req.Timeout + DefaultTimeout}, &out)
	return out, err
}

// TaskLogs streams a task's log (its program's stdout and stderr, or a
// VM's console) through the server from the agent of its host. The caller
// closes the stream; with follow it ends only when ctx does.
func (c *Client) TaskLogs(ctx context.Context, task string, lines int, follow bool) (io.ReadCloser, error) {
	q := url.Values{"lines": {strconv.Itoa(lines)}}
	if follow {
		q.Set("follow", "1")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/tasks/"+task+"/logs?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("api: GET task logs: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, readStatusError(resp)
	}
	return resp.Body, nil
}

// readStatusError turns a non-2xx answer into a *StatusError.
func readStatusError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return statusError(resp.StatusCode, data)
}

// statusError is the *StatusError of a non-2xx answer with body data: the
// server's (or agent's) api.Error, or else the body as text (a proxy's
// page, a plain http.Error).
func statusError(code int, data []byte) *StatusError {
	se := &StatusError{Code: code, Message: strings.TrimSpace(string(data))}
	var e Error
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		se.Message, se.Details = e.Error, e.Details
	}
	return se
}

// PostVerifyRun stores the result of a verify run of app (rep: the verify
// report as `corridor verify -o json` prints it).
func (c *Client) PostVerifyRun(ctx context.Context, app string, rep []byte) (VerifyRun, error) {
	var out VerifyRun
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/v1/apps" + path(app, "verify-runs"), raw: rep, contentType: "application/json"}, &out)
	return out, err
}

// VerifyRuns lists the stored verify runs of app, newest first (limit <=
// 0: all the server keeps).
func (c *Client) VerifyRuns(ctx context.Context, app string, limit int) ([]VerifyRun, error) {
	var out []VerifyRun
	req := request{method: http.MethodGet, path: "/v1/apps" + path(app, "verify-runs")}
	if limit > 0 {
		req.query = url.Values{"limit": {strconv.Itoa(limit)}}
	}
	_, err := c.do(ctx, req, &out)
	return out, err
}

// LastVerifyRuns lists the newest verify run of every app (without their
// reports).
func (c *Client) LastVerifyRuns(ctx context.Context) ([]VerifyRun, error) {
	var out []VerifyRun
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/v1/verify-runs"}, &out)
	return out, err
}

// Report asks for app's evidence report, signed by the control plane's CA;
// since is an RFC 3339 time or a duration ("" for the server's default).
func (c *Client) Report(ctx context.Context, app, since string) (SignedReport, error) {
	var out SignedReport
	req := request{method: http.MethodGet, path: "/v1/apps" + path(app, "report")}
	if since != "" {
		req.query = url.Values{"since": {since}}
	}
	if _, err := c.do(ctx, req, &out); err != nil {
		return out, err
	}
	// The signature covers the compact encoding; an answer indented on
	// the way compacts back to it.
	var b bytes.Buffer
	if err := json.Compact(&b, out.Report); err != nil {
		return out, fmt.Errorf("api: report: %w", err)
	}
	out.Report = b.Bytes()
	return out, nil
}

// closedIdle reports net/http's "server closed idle connection" error, which
// the transport returns (unexported) when the server closed a reused
// connection before reading the request on it.
func closedIdle(err error) bool {
	return strings.Contains(err.Error(), "http: server closed idle connection")
}
