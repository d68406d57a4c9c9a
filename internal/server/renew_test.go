package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// renewOnce asks for a new certificate over the mTLS connection of tc, and
// returns the TLS config of the new certificate.
func renewOnce(t *testing.T, ts *testServer, name string, tc *tls.Config) (*tls.Config, *x509.Certificate, error) {
	t.Helper()
	c, err := api.NewClient(ts.URL(), "", tc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	keyPEM, csrPEM, err := newCSR(name)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Renew(context.Background(), name, api.RenewRequest{CSR: string(csrPEM)})
	if err != nil {
		return nil, nil, err
	}
	ntc, err := api.AgentTLS([]byte(resp.Certificate), keyPEM, []byte(resp.CA))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(resp.Certificate))
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return ntc, cert, nil
}

func statusWith(t *testing.T, ts *testServer, name string, tc *tls.Config) error {
	t.Helper()
	c, err := api.NewClient(ts.URL(), "", tc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	return c.ReportStatus(context.Background(), name, api.Status{Name: name})
}

// An agent renews its certificate with its current one, without the join
// token; the certificate's lifetime is the server's --agent-cert-lifetime;
// the new certificate works, the one it replaced still works (an agent may
// have lost the answer), the one before that is refused; a removed server
// cannot renew; and one agent cannot renew for another.
func TestAgentRenewsCertificate(t *testing.T) {
	const lifetime = 90 * time.Second
	ts := startServer(t, Config{ClientCertLifetime: lifetime})
	a := ts.join(t, "s1", 0, nil)
	ts.join(t, "s2", 1, nil)

	tc1 := a.tls
	tc2, cert2, err := renewOnce(t, ts, "s1", tc1)
	if err != nil {
		t.Fatalf("renew with the joined certificate: %v", err)
	}
	if got := cert2.NotAfter.Sub(cert2.NotBefore); got != lifetime+lifetime/10 {
		t.Errorf("renewed certificate spans %s, want the lifetime %s and a tenth backdated", got, lifetime)
	}
	if cert2.Subject.CommonName != "s1" {
		t.Errorf("renewed certificate is for %q", cert2.Subject.CommonName)
	}
	if err := statusWith(t, ts, "s1", tc2); err != nil {
		t.Fatalf("the renewed certificate is refused: %v", err)
	}
	if err := statusWith(t, ts, "s1", tc1); err != nil {
		t.Fatalf("the certificate just replaced is refused (an agent that lost the answer would be locked out): %v", err)
	}
	tc3, _, err := renewOnce(t, ts, "s1", tc2)
	if err != nil {
		t.Fatalf("second renewal: %v", err)
	}
	if err := statusWith(t, ts, "s1", tc1); api.HTTPStatus(err) != http.StatusForbidden {
		t.Fatalf("a certificate two renewals old: %v, want 403", err)
	}
	if _, _, err := renewOnce(t, ts, "s1", tc1); api.HTTPStatus(err) != http.StatusForbidden {
		t.Fatalf("renewal with a certificate two renewals old: %v, want 403", err)
	}

	// s1's certificate may not renew s2's.
	c, _ := api.NewClient(ts.URL(), "", tc3)
	_, csr, _ := newCSR("s2")
	if _, err := c.Renew(context.Background(), "s2", api.RenewRequest{CSR: string(csr)}); api.HTTPStatus(err) != http.StatusForbidden {
		t.Fatalf("s1 renewing for s2: %v, want 403", err)
	}
	// A CSR for another name is refused.
	_, csr, _ = newCSR("s2")
	if _, err := c.Renew(context.Background(), "s1", api.RenewRequest{CSR: string(csr)}); api.HTTPStatus(err) != http.StatusBadRequest {
		t.Fatalf("s1 renewing with a CSR for s2: %v, want 400", err)
	}
	c.CloseIdleConnections()

	// Revoked: neither the current certificate nor the previous one renews.
	if err := ts.admin.RemoveServer(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []*tls.Config{tc3, tc2} {
		if _, _, err := renewOnce(t, ts, "s1", tc); api.HTTPStatus(err) != http.StatusForbidden {
			t.Fatalf("a removed server renewing (certificate %d): %v, want 403", i, err)
		}
	}
}

func TestClientCertLifetimeTooShort(t *testing.T) {
	_, err := New(Config{DataDir: t.TempDir(), ClientCertLifetime: time.Second})
	if err == nil {
		t.Fatal("a 1s agent certificate lifetime was accepted")
	}
}
