package agent_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"crypto/x509"
	"encoding/pem"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/agent/agenttest"
)

func TestCSRNamesTheAgent(t *testing.T) {
	keyPEM, csrPEM, err := agent.NewKeyAndCSR("s7", netip.MustParseAddr("198.18.0.7"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(csrPEM)
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if csr.Subject.CommonName != "s7" || len(csr.IPAddresses) != 1 || csr.IPAddresses[0].String() != "198.18.0.7" {
		t.Fatalf("CSR subject %v, IPs %v", csr.Subject, csr.IPAddresses)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatal(err)
	}
	if kb, _ := pem.Decode(keyPEM); kb == nil || kb.Type != "PRIVATE KEY" {
		t.Fatal("key is not a PKCS#8 PEM block")
	}
}

func TestLoadIdentity(t *testing.T) {
	ca, err := agenttest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	other, err := agenttest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	key, cert, err := ca.Issue("s1")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()

	dir := t.TempDir()
	if _, err := agent.LoadIdentity(dir, "s1", now); !errors.Is(err, agent.ErrNoIdentity) {
		t.Fatalf("empty dir: %v, want ErrNoIdentity", err)
	}
	id, err := agent.ParseIdentity(key, cert, ca.CertPEM, "s1", now)
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Save(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := agent.LoadIdentity(dir, "s1", now); err != nil {
		t.Fatalf("load: %v", err)
	}

	for _, c := range []struct {
		name, host string
		now        time.Time
		caPEM      []byte
		want       string
	}{
		{"renamed host", "s2", now, ca.CertPEM, `is for "s1", not "s2"`},
		{"expiring", "s1", now.Add(55 * time.Minute), ca.CertPEM, "expires at"},
		{"expired", "s1", now.Add(2 * time.Hour), ca.CertPEM, "does not verify"},
		{"other CA", "s1", now, other.CertPEM, "does not verify"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, agent.CAFile), c.caPEM, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := agent.LoadIdentity(dir, c.host, c.now)
			if err == nil || errors.Is(err, agent.ErrNoIdentity) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one containing %q", err, c.want)
			}
		})
	}

	if _, err := agent.ParseIdentity(key, []byte("junk"), ca.CertPEM, "s1", now); err == nil {
		t.Fatal("junk certificate accepted")
	}
	_, cert2, _ := ca.Issue("s1")
	if _, err := agent.ParseIdentity(key, cert2, ca.CertPEM, "s1", now); err == nil {
		t.Fatal("certificate of another key accepted")
	}
}
