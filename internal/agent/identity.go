package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/corridor-dev/corridor/internal/atomicfile"
)

// Files of the agent's TLS identity in its state directory. The WireGuard
// key lives beside them, written by the data plane.
const (
	KeyFile  = "agent.key" // ECDSA P-256, PKCS#8 PEM, mode 0600
	CertFile = "agent.crt" // issued by the cluster CA at join
	CAFile   = "ca.crt"    // the cluster CA, as the server gave it at join
)

// ServerCommonName is the CN of the certificate the Corridor server presents
// when it calls an agent's local API (it proxies user requests to agents).
const ServerCommonName = "corridor-server"

// ErrNoIdentity means the state directory holds no TLS identity yet: the
// agent has to join with a join token.
var ErrNoIdentity = errors.New("agent: no TLS identity in the state directory")

// renewMargin is how long before expiry a stored certificate is treated as
// unusable, so that a restart near expiry joins again rather than starting
// with a certificate the server is about to refuse. Short-lived
// certificates get a tenth of their lifetime instead.
const renewMargin = time.Hour

// Identity is the agent's TLS identity: its key, the certificate the
// cluster CA issued for it, and that CA.
type Identity struct {
	KeyPEM  []byte
	CertPEM []byte
	CAPEM   []byte

	cert *x509.Certificate
	pair tls.Certificate
	pool *x509.CertPool
}

// Certificate is the parsed agent certificate.
func (id *Identity) Certificate() *x509.Certificate { return id.cert }

// TLSCertificate is the key pair, for a tls.Config.
func (id *Identity) TLSCertificate() tls.Certificate { return id.pair }

// CAPool holds the cluster CA.
func (id *Identity) CAPool() *x509.CertPool { return id.pool }

// ParseIdentity checks that the three PEM blocks belong together: the key
// matches the certificate, whose CN is name, which the CA signed, and which
// is valid at now.
func ParseIdentity(keyPEM, certPEM, caPEM []byte, name string, now time.Time) (*Identity, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("agent certificate and key do not match: %w", err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse agent certificate: %w", err)
	}
	if cert.Subject.CommonName != name {
		return nil, fmt.Errorf("agent certificate is for %q, not %q", cert.Subject.CommonName, name)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("CA: no PEM certificate found")
	}
	_, err = cert.Verify(x509.VerifyOptions{
		Roots:       pool,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("agent certificate does not verify against the cluster CA: %w", err)
	}
	return &Identity{KeyPEM: keyPEM, CertPEM: certPEM, CAPEM: caPEM, cert: cert, pair: pair, pool: pool}, nil
}

// LoadIdentity reads the identity stored in dir. It wraps ErrNoIdentity
// when none is stored; any other error means one is stored but unusable.
func LoadIdentity(dir, name string, now time.Time) (*Identity, error) {
	var blocks [3][]byte
	for i, f := range []string{KeyFile, CertFile, CAFile} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w (%s missing)", ErrNoIdentity, f)
		}
		if err != nil {
			return nil, fmt.Errorf("read identity: %w", err)
		}
		blocks[i] = b
	}
	id, err := ParseIdentity(blocks[0], blocks[1], blocks[2], name, now)
	if err != nil {
		return nil, fmt.Errorf("stored identity in %s: %w", dir, err)
	}
	margin := min(renewMargin, id.cert.NotAfter.Sub(id.cert.NotBefore)/10)
	if now.Add(margin).After(id.cert.NotAfter) {
		return nil, fmt.Errorf("stored identity in %s: certificate expires at %s", dir, id.cert.NotAfter.Format(time.RFC3339))
	}
	return id, nil
}

// Save writes the identity to dir, the key with mode 0600. The certificate
// is written last: its presence marks a complete identity.
func (id *Identity) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{CAFile, id.CAPEM, 0o644},
		{KeyFile, id.KeyPEM, 0o600},
		{CertFile, id.CertPEM, 0o644},
	} {
		if err := atomicfile.Write(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("save identity: %w", err)
		}
	}
	return nil
}

// NewKeyAndCSR makes an ECDSA P-256 key and a CSR for it with CN = name.
// The CSR also names the agent by DNS name and, when known, by its
// underlay address, so that the issued certificate can serve the agent's
// local API to the server as well.
func NewKeyAndCSR(name string, addr netip.Addr) (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate TLS key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal TLS key: %w", err)
	}
	tmpl := &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: name},
		DNSNames: []string{name},
	}
	if addr.IsValid() {
		tmpl.IPAddresses = append(tmpl.IPAddresses, addr.AsSlice())
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}), nil
}
