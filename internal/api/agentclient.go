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
)

// AgentAPIClientTLS is the TLS configuration with which the Corridor server
// calls the local API of the agent named agent: it presents cert (CN
// "corridor-server", signed by the cluster CA) and accepts only the
// certificate the cluster CA issued to that agent.
//
// Agent certificates are issued for client auth and name the agent only by
// CN, so the usual host name and server-auth checks do not apply; the
// chain, the CN and the validity are checked here instead.
func AgentAPIClientTLS(ca *x509.CertPool, cert tls.Certificate, agent string) *tls.Config {
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

// AgentClient calls one agent's local API.
type AgentClient struct {
	base string
	http *http.Client
}

// NewAgentClient returns a client of the agent API at addr ("host:port"),
// with a TLS configuration from AgentAPIClientTLS.
func NewAgentClient(addr string, tlsConf *tls.Config) *AgentClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	return &AgentClient{base: "https://" + addr, http: &http.Client{Transport: tr}}
}

// Status is GET /v1/status.
func (c *AgentClient) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Probe is POST /v1/probe.
func (c *AgentClient) Probe(ctx context.Context, req ProbeRequest) (ProbeResult, error) {
	var res ProbeResult
	err := c.do(ctx, http.MethodPost, "/v1/probe", req, &res)
	return res, err
}

// Logs is GET /v1/logs/{task}: the caller reads (and closes) the stream,
// which with follow ends only when ctx does.
func (c *AgentClient) Logs(ctx context.Context, task string, lines int, follow bool) (io.ReadCloser, error) {
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
		return nil, readStatusError(resp)
	}
	return resp.Body, nil
}

func (c *AgentClient) do(ctx context.Context, method, path string, in, out any) error {
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
		return readStatusError(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("agent API %s: %w", path, err)
	}
	return nil
}
