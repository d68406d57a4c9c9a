package sample

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// ErrNoApp is returned when no app peer could be reached.
var ErrNoApp = errors.New("sample: no app peer reachable")

// AppError is an error reply from app (4xx, or 5xx from the last peer
// tried).
type AppError struct {
	Code int
	Msg  string
}

func (e *AppError) Error() string { return fmt.Sprintf("app: %d: %s", e.Code, e.Msg) }

// AppClient calls the app tier: round-robin over its base URLs, failing
// over to the next one when a peer cannot be reached.
//
// Failover is limited to what cannot duplicate an order: a GET fails over on
// any transport error or a 502/503/504; a POST only when the connection
// could not be made at all (the request never left), since after that the
// order may already be stored.
type AppClient struct {
	bases []string
	http  *http.Client
	log   *slog.Logger
	next  atomic.Uint64
}

// NewAppClient returns a client for base URLs such as "http://10.0.0.2:8080".
func NewAppClient(bases []string, log *slog.Logger) (*AppClient, error) {
	if len(bases) == 0 {
		return nil, errors.New("app peers: none given (set CORRIDOR_PEERS_APP or --app)")
	}
	for _, b := range bases {
		if !strings.HasPrefix(b, "http://") && !strings.HasPrefix(b, "https://") {
			return nil, fmt.Errorf("app peer %q: want a URL starting with http:// or https://", b)
		}
	}
	if log == nil {
		log = slog.Default()
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &AppClient{bases: bases, http: &http.Client{Transport: tr, Timeout: 10 * time.Second}, log: log}, nil
}

// PeersToURLs turns "addr:port" peers into http:// base URLs.
func PeersToURLs(peers []string) []string {
	out := make([]string, len(peers))
	for i, p := range peers {
		out[i] = "http://" + p
	}
	return out
}

// CreateOrder posts an order to app.
func (c *AppClient) CreateOrder(ctx context.Context, req OrderRequest) (OrderReply, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return OrderReply{}, err
	}
	var out OrderReply
	err = c.call(ctx, http.MethodPost, "/orders", body, &out)
	return out, err
}

// ListOrders gets all orders from app.
func (c *AppClient) ListOrders(ctx context.Context) (OrderList, error) {
	var out OrderList
	err := c.call(ctx, http.MethodGet, "/orders", nil, &out)
	return out, err
}

// Close drops idle connections.
func (c *AppClient) Close() { c.http.CloseIdleConnections() }

func (c *AppClient) call(ctx context.Context, method, path string, body []byte, out any) error {
	start := int(c.next.Add(1) - 1)
	var errs []error
	for i := range c.bases {
		base := c.bases[(start+i)%len(c.bases)]
		err := c.once(ctx, base, method, path, body, out)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", base, err))
		if ctx.Err() != nil || !c.mayFailOver(method, err) {
			return err
		}
		c.log.Warn("app peer failed; trying the next", "peer", base, "err", err)
	}
	return fmt.Errorf("%w: %w", ErrNoApp, errors.Join(errs...))
}

func (c *AppClient) mayFailOver(method string, err error) bool {
	var ae *AppError
	if errors.As(err, &ae) {
		return method == http.MethodGet && ae.Code >= 502 && ae.Code <= 504
	}
	if method == http.MethodGet {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (c *AppClient) once(ctx context.Context, base, method, path string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(base, "/")+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("read app reply: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return &AppError{Code: resp.StatusCode, Msg: truncate(msg, 300)}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode app reply: %w", err)
	}
	return nil
}
