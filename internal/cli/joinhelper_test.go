package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"testing"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/server"
	"github.com/corridor-dev/corridor/internal/spec"
)

// joinServer registers a server through the join API, as an agent does,
// and returns the agent's mTLS client.
func joinServer(t *testing.T, s *server.Server, name string) *api.Client {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	pub := make([]byte, 32)
	rand.Read(pub)
	pool, _ := api.CAPool(s.CACert())
	c, _ := api.NewClient(s.URL(), "", &tls.Config{RootCAs: pool})
	resp, err := c.Join(context.Background(), api.JoinRequest{
		Name: name, Token: s.JoinToken(), CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
		Address: "198.18.0.11", Capacity: spec.Resources{CPU: 4000, Memory: 8 << 30},
		PublicKey: base64.StdEncoding.EncodeToString(pub), WireGuardPort: 51820,
	})
	if err != nil {
		t.Fatalf("join %s: %v", name, err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair([]byte(resp.Certificate), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	if err != nil {
		t.Fatal(err)
	}
	ac, err := api.NewClient(s.URL(), "", &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	return ac
}
