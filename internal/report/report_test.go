package report

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/verify"
)

// testCA makes a self-signed CA of the key's type and returns its key,
// DER and PEM.
func testCA(t *testing.T, ed bool) (crypto.Signer, []byte, []byte) {
	t.Helper()
	var key crypto.Signer
	var err error
	if ed {
		_, key, err = ed25519.GenerateKey(rand.Reader)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return key, der, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func sample() *Report {
	now := time.Date(2026, 12, 5, 18, 0, 0, 0, time.UTC)
	return &Report{
		Format: Format, App: "shop", GeneratedAt: now,
		Period:  Period{Since: now.Add(-7 * 24 * time.Hour), Until: now},
		Control: ControlPlane{ID: "cp1", Version: "test", CA: "sha256:x", Revision: 42},
		Policy: Policy{Revision: 7, Hash: "sha256:abc", UpdatedBy: "admin", UpdatedAt: now,
			Spec: spec.App{Name: "shop", Classes: []spec.Class{{Name: "web"}, {Name: "db"}},
				Rules: []spec.Rule{{From: "web", To: "db", Ports: []int{5432}, Encrypt: true}}},
			Source: "name: shop\n# <script>alert(1)</script>\n"},
		Tasks:  []Task{{ID: "shop/web/0", Class: "web", Server: "s1", Address: "100.64.0.2", Reason: "least loaded", Rejected: []string{"s2: runs a task of shop"}}},
		Matrix: []Cell{{FromClass: "web", ToClass: "db", Verdict: "encrypted", Ports: "tcp/5432"}},
		Paths:  []Path{{From: "shop/web/0", To: "shop/db/0", FromClass: "web", ToClass: "db", FromServer: "s1", ToServer: "s2", Kind: "encrypted", Ports: "tcp/5432", HandshakeAge: 12, RxBytes: 1000, TxBytes: 2000}},
		Verify: &VerifyRun{ID: "1-ab", Time: now, By: "admin", OK: true, Passed: 1,
			Checks: []verify.Check{{App: "shop", FromTask: "shop/web/0", ToTask: "shop/db/0", FromServer: "s1", ToServer: "s2",
				Protocol: "tcp", Port: 5432, Expect: "encrypted", Observed: "encrypted", OK: true, WireGuardFrames: 4, Time: now}}},
		Keys:     []Key{{Server: "s1", PublicKey: "pk", Generation: 1, Reported: 1, Since: now.Add(-time.Hour), AgeSeconds: 3600}},
		Events:   []Event{{Time: now, Who: "admin", Action: "app.apply", Object: "app/shop"}},
		Versions: Versions{Server: "test", Agents: []AgentVersion{{Server: "s1", Version: "test", LastSeen: now}}},
	}
}

// A signed report renders to HTML and JSON files that check with the CA,
// and every one-byte edit of either file, anywhere, fails the check: in
// the visible tables, in the embedded envelope, in the signature.
func TestReportFilesVerifyAndEditsFail(t *testing.T) {
	for _, ed := range []bool{false, true} {
		key, der, caPEM := testCA(t, ed)
		signed, err := Sign(key, der, sample())
		if err != nil {
			t.Fatal(err)
		}
		html, err := HTML(signed)
		if err != nil {
			t.Fatal(err)
		}
		js, err := EncodeJSON(signed)
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{"html": html, "json": js} {
			r, sig, err := VerifyFile(data, caPEM)
			if err != nil {
				t.Fatalf("%s (ed25519 %v): intact file does not verify: %v", name, ed, err)
			}
			if r.App != "shop" || r.Verify == nil || r.Verify.Checks[0].WireGuardFrames != 4 || sig.CA != Digest(der) {
				t.Errorf("%s: verified report = %+v, sig %+v", name, r, sig)
			}
			// A spread of positions (each costs a verification and a
			// render: fewer for the Ed25519 CA, the same code), every byte
			// of the JSON's signature, and the places that matter.
			spread := 200
			if ed {
				spread = 20
			}
			positions := []int{0, len(data) - 1}
			for i := 0; i < len(data); i += len(data)/spread + 1 {
				positions = append(positions, i)
			}
			if i := bytes.Index(data, []byte(`"signature":`)); name == "json" && i >= 0 {
				for ; i < len(data); i++ {
					positions = append(positions, i)
				}
			}
			for _, marker := range []string{"least loaded", "encrypted", `id="corridor-signed-report">`, "</script>"} {
				if i := bytes.Index(data, []byte(marker)); i >= 0 {
					positions = append(positions, i, i+len(marker)-1)
				}
			}
			for _, i := range positions {
				edited := bytes.Clone(data)
				edited[i] ^= 0x01
				if _, _, err := VerifyFile(edited, caPEM); err == nil {
					t.Fatalf("%s: flipping a bit of byte %d (%q) still verifies", name, i, data[max(0, i-20):min(len(data), i+20)])
				}
			}
		}
		// Another CA's certificate does not vouch for it.
		_, _, otherPEM := testCA(t, ed)
		if _, _, err := VerifyFile(html, otherPEM); !errors.Is(err, ErrBadSignature) {
			t.Errorf("verify with another CA: %v, want ErrBadSignature", err)
		}
	}
}

// The HTML is self-contained: no external asset, no script that runs,
// and text from the report (the source YAML) is escaped.
func TestReportHTMLSelfContained(t *testing.T) {
	key, der, _ := testCA(t, false)
	signed, err := Sign(key, der, sample())
	if err != nil {
		t.Fatal(err)
	}
	html, err := HTML(signed)
	if err != nil {
		t.Fatal(err)
	}
	s := string(html)
	for _, bad := range []string{"http://", "https://", "<link", "src=", "<script>alert", "@import"} {
		if strings.Contains(s, bad) {
			t.Errorf("the HTML contains %q", bad)
		}
	}
	if strings.Count(s, "<script") != 1 || !strings.Contains(s, `<script type="application/octet-stream"`) {
		t.Errorf("the only script block must be the inert envelope")
	}
	for _, want := range []string{"<style>", "shop/web/0", "least loaded", "tcp/5432", "&lt;script&gt;", "sha256:abc", "1-ab"} {
		if !strings.Contains(s, want) {
			t.Errorf("the HTML lacks %q", want)
		}
	}
	again, _ := HTML(signed)
	if !bytes.Equal(html, again) {
		t.Error("rendering is not deterministic")
	}
}

// A signature over another report, or none, fails.
func TestVerifySignedRejects(t *testing.T) {
	key, der, caPEM := testCA(t, false)
	a, _ := Sign(key, der, sample())
	other := sample()
	other.Policy.Revision = 8
	b, _ := Sign(key, der, other)
	swapped := api.SignedReport{Report: a.Report, Signature: b.Signature}
	if _, err := VerifySigned(swapped, caPEM); !errors.Is(err, ErrBadSignature) {
		t.Errorf("another report's signature: %v", err)
	}
	if _, err := VerifySigned(api.SignedReport{Report: a.Report}, caPEM); !errors.Is(err, ErrBadSignature) {
		t.Errorf("no signature: %v", err)
	}
	if _, _, err := VerifyFile([]byte("<html>nothing</html>"), caPEM); err == nil {
		t.Error("a page without a report verifies")
	}
}
