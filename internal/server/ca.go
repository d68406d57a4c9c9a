package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/corridor-dev/corridor/internal/store"
)

// The CA lives in etcd so that every server sharing it signs with the same
// key and trusts the same agents; ca.crt in the data directory is a copy
// for users (`corridor login --ca`).
const (
	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 365 * 24 * time.Hour
)

// DefaultClientCertLifetime is how long an agent's certificate is valid
// unless the server is told otherwise (--agent-cert-lifetime); agents
// renew it at two thirds of its lifetime, without the join token.
const DefaultClientCertLifetime = 365 * 24 * time.Hour

// MinClientCertLifetime is the shortest lifetime the server accepts (tests
// use it; an agent must have time to renew).
const MinClientCertLifetime = 5 * time.Second

type authority struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	pool    *x509.CertPool
	// clientValidity is the lifetime of agents' certificates.
	clientValidity time.Duration
}

type caMaterial struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

func loadOrCreateCA(ctx context.Context, st *store.Store) (*authority, error) {
	raw, err := st.EnsureSecret(ctx, "ca", newCAMaterial)
	if err != nil {
		return nil, fmt.Errorf("server: CA: %w", err)
	}
	var m caMaterial
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("server: CA material in etcd is corrupt: %w", err)
	}
	cb, _ := pem.Decode([]byte(m.Cert))
	kb, _ := pem.Decode([]byte(m.Key))
	if cb == nil || kb == nil {
		return nil, errors.New("server: CA material in etcd holds no PEM block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("server: CA certificate: %w", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("server: CA key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("server: CA key cannot sign")
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &authority{cert: cert, certPEM: []byte(m.Cert), key: signer, pool: pool}, nil
}

func newCAMaterial() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("server: CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "Corridor CA", Organization: []string{"corridor"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("server: CA certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return json.Marshal(caMaterial{
		Cert: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		Key:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})),
	})
}

func randomSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) // never fails on Linux
	return n.Add(n, big.NewInt(1))
}

// serverCert makes a fresh key and certificate for this server's names.
// It is made on every start: nothing outside the process needs it.
func (a *authority) serverCert(hosts []string) (tls.Certificate, error) {
	return a.ephemeralCert("corridor server", x509.ExtKeyUsageServerAuth, hosts)
}

// relayCert is the client certificate with which this server calls the
// agents' local APIs (logs, probes); agents accept only this CN.
func (a *authority) relayCert() (tls.Certificate, error) {
	return a.ephemeralCert(relayCommonName, x509.ExtKeyUsageClientAuth, nil)
}

// relayCommonName must match agent.ServerCommonName.
const relayCommonName = "corridor-server"

func (a *authority) ephemeralCert(cn string, usage x509.ExtKeyUsage, hosts []string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(serverValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server: sign %s certificate: %w", cn, err)
	}
	return tls.Certificate{Certificate: [][]byte{der, a.cert.Raw}, PrivateKey: key}, nil
}

// signClient signs an agent's CSR. The agent keeps its key; the
// certificate's CN is the server name the agent joined as.
func (a *authority) signClient(csrPEM, name string) (certPEM []byte, serial string, err error) {
	b, _ := pem.Decode([]byte(csrPEM))
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, "", errors.New("csr: not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", fmt.Errorf("csr: bad signature: %w", err)
	}
	if csr.Subject.CommonName != name {
		return nil, "", fmt.Errorf("csr: common name %q must be the server name %q", csr.Subject.CommonName, name)
	}
	now := time.Now()
	sn := randomSerial()
	validity := a.clientValidity
	if validity <= 0 {
		validity = DefaultClientCertLifetime
	}
	// Backdated for clocks a little behind, by at most a tenth of the
	// lifetime: the agent renews at two thirds of NotAfter-NotBefore.
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"corridor-agent"}},
		NotBefore:    now.Add(-min(time.Hour, validity/10)),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, csr.PublicKey, a.key)
	if err != nil {
		return nil, "", fmt.Errorf("sign client certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), sn.Text(16), nil
}
