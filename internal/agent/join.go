package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"syscall"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// DefaultJoinTimeout is how long `corridor agent` tries to join before it
// gives up, unless told otherwise (--join-timeout; 0 waits forever).
const DefaultJoinTimeout = 2 * time.Minute

// JoinOptions say how the agent joins and where its join settings came
// from, so that a failed join can say what to check.
type JoinOptions struct {
	// Timeout bounds how long the agent tries to join before it gives up
	// with the last error; 0 tries until its context ends.
	Timeout time.Duration
	// CA names where the CA the agent trusts at join came from, such as
	// "--ca /etc/corridor/ca.crt"; empty: none given (the system's roots).
	CA string
	// TokenSource names where the join token came from, such as
	// "--join-token-file /etc/corridor/join.token".
	TokenSource string
}

// ensureIdentity returns the stored identity or joins the cluster to get
// one, retrying with backoff while the server cannot be reached, for at
// most JoinOptions.Timeout. A refusal by the server (wrong token, a
// removed name) ends it at once. Every error says what to check.
func (a *Agent) ensureIdentity(ctx context.Context) (*Identity, error) {
	id, err := LoadIdentity(a.cfg.StateDir, a.cfg.Name, a.cfg.Now())
	if err == nil {
		a.log.Info("using stored identity", "notAfter", id.Certificate().NotAfter)
		return id, nil
	}
	if a.cfg.Bootstrap == nil || a.cfg.JoinToken == "" {
		return nil, fmt.Errorf("%w; give a join token (--join-token-file DATA_DIR/join.token of the server) to join the cluster", err)
	}
	if !errors.Is(err, ErrNoIdentity) {
		a.log.Warn("stored identity unusable, joining again", "err", err)
	}
	bo := backoff{Min: a.cfg.BackoffMin, Max: a.cfg.BackoffMax}
	start := time.Now()
	timeout := a.cfg.Join.Timeout
	for tries := 1; ; tries++ {
		id, err := a.join(ctx)
		if err == nil {
			a.log.Info("joined the cluster", "notAfter", id.Certificate().NotAfter)
			return id, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		err = a.explainJoin(err)
		if permanent(err) {
			return nil, err
		}
		wait := bo.next()
		if timeout > 0 && time.Since(start)+wait > timeout {
			return nil, fmt.Errorf("gave up joining after %d tries in %s (--join-timeout %s; 0 waits forever): %w",
				tries, time.Since(start).Round(time.Second), timeout, err)
		}
		a.log.Warn("join failed, retrying", "err", err, "in", wait.Round(time.Millisecond))
		if !sleepCtx(ctx, wait) {
			return nil, ctx.Err()
		}
	}
}

func (a *Agent) join(ctx context.Context) (*Identity, error) {
	keyPEM, csrPEM, err := NewKeyAndCSR(a.cfg.Name, a.cfg.Address)
	if err != nil {
		return nil, err
	}
	pub, _ := a.cfg.Dataplane.Key()
	resp, err := a.cfg.Bootstrap.Join(ctx, api.JoinRequest{
		Name:          a.cfg.Name,
		Token:         a.cfg.JoinToken,
		CSR:           string(csrPEM),
		Address:       addrString(a.cfg.Address),
		Capacity:      a.cfg.Capacity,
		Labels:        a.cfg.Labels,
		PublicKey:     pub,
		WireGuardPort: a.cfg.WireGuardPort,
	})
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	id, err := ParseIdentity(keyPEM, []byte(resp.Certificate), []byte(resp.CA), a.cfg.Name, a.cfg.Now())
	if err != nil {
		return nil, fmt.Errorf("join answer: %w", err)
	}
	if err := id.Save(a.cfg.StateDir); err != nil {
		return nil, err
	}
	return id, nil
}

// permanent reports whether a join error cannot go away by retrying: the
// server refused the request itself (bad token, invalid name or address).
// Timeouts, rate limits and server errors are retried.
func permanent(err error) bool {
	code := api.HTTPStatus(err)
	return code >= 400 && code < 500 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests
}

// explainJoin adds to a failed join what the operator should check.
func (a *Agent) explainJoin(err error) error {
	if hint := joinHint(err, a.cfg.Join); hint != "" {
		return fmt.Errorf("%w\n  %s", err, hint)
	}
	return err
}

// joinHint says what to check after a failed join, or "".
func joinHint(err error, o JoinOptions) string {
	ca := "--ca"
	if o.CA != "" {
		ca = o.CA
	}
	token := "the join token"
	if o.TokenSource != "" {
		token = o.TokenSource
	}
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
	)
	switch code := api.HTTPStatus(err); {
	case code == http.StatusUnauthorized:
		return fmt.Sprintf("the server refused the join token: check %s: it must hold the token in the server's DATA_DIR/join.token", token)
	case code == http.StatusForbidden:
		return "the server refused this agent's join: see its message above (a removed server joins again only under a new --name)"
	case errors.As(err, &unknown):
		if o.CA == "" {
			return "the server's certificate is signed by a CA this agent does not trust: give --ca, the server's DATA_DIR/ca.crt"
		}
		return fmt.Sprintf("the server's certificate is not signed by the CA this agent trusts: check %s: it must be the server's DATA_DIR/ca.crt", ca)
	case errors.As(err, &hostname):
		return fmt.Sprintf("the server's certificate does not name %s: use an address the server's certificate names in --server (the server's --advertise)", hostname.Host)
	case errors.As(err, &invalid):
		return "the server's certificate is not valid now: check the clocks of both machines, and that " + ca + " is the server's DATA_DIR/ca.crt"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "nothing listens there: check that `corridor server` runs and that --server names its address and port"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to the server: check --server's address and this host's routes"
	case errors.Is(err, syscall.ECONNRESET):
		return "the server closed the connection: check that --server is the https:// URL the server prints at start"
	}
	return ""
}
