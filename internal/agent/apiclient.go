package agent

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

	"github.com/corridor-dev/corridor/internal/api"
)

// APIClientTLS is the TLS configuration with which the Corridor server
// calls the local API of the agent named agent: it presents cert (CN
// "corridor-server", signed by the cluster CA) and accepts only the
// certificate the cluster CA issued to that agent.
//
// Agent certificates are issued for client auth and name the agent only by
// CN, so the usual host name and server-auth checks do not apply; the
// chain, the CN and the validity are checked here instead.
func APIClientTLS(ca *x509.CertPool, cert tls.Certificate, agent string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The standard verification is replaced, not skipped: see
		// VerifyConnection.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("agent API: the agent presented no certificate")
			}
			leaf := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{
				Roots: ca, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
			}); err != nil {
				return fmt.Errorf("agent API: certificate of %s: %w", agent, err)
			}
			if leaf.Subject.CommonName != agent {
				return fmt.Errorf("agent API: expected agent %q, the certificate is for %q", agent, leaf.Subject.CommonName)
			}
			return nil
		},
	}
}

// APIClient calls one agent's local API.
type APIClient struct {
	base string
	http *http.Client
}

// NewAPIClient returns a client of the agent API at addr ("host:port"),
// with a TLS configuration from APIClientTLS.
func NewAPIClient(addr string, tlsConf *tls.Config) *APIClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	return &APIClient{base: "https://" + addr, http: &http.Client{Transport: tr}}
}

// Status is GET /v1/status.
func (c *APIClient) Status(ctx context.Context) (api.Status, error) {
	var st api.Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Probe is POST /v1/probe.
func (c *APIClient) Probe(ctx context.Context, req api.ProbeRequest) (api.ProbeResult, error) {
	var res api.ProbeResult
	err := c.do(ctx, http.MethodPost, "/v1/probe", req, &res)
	return res, err
}

// Logs is GET /v1/logs/{task}: the caller reads (and closes) the stream,
// which with follow ends only when ctx does.
func (c *APIClient) Logs(ctx context.Context, task string, lines int, follow bool) (io.ReadCloser, error) {
	q := url.Values{"lines": {strconv.Itoa(lines)}}
	if follow {
		q.Set("follow", "1")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/logs/"+url.PathEscape(task)+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, statusError(resp)
	}
	return resp.Body, nil
}

func (c *APIClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return statusError(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("agent API %s: %w", path, err)
	}
	return nil
}

// statusError turns a non-200 answer into an *api.StatusError.
func statusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e api.Error
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(b))
	}
	return &api.StatusError{Code: resp.StatusCode, Message: e.Error, Details: e.Details}
}
