package hoststate_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/hoststate"
)

// caPEM makes a self-signed CA certificate for key.
func caPEM(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func keys(t *testing.T) map[string]crypto.Signer {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]crypto.Signer{"ecdsa": ec, "ed25519": ed}
}

// A signed state verifies with the CA certificate's key after a trip
// through JSON, indented as desired.json is; any change to the state after
// signing, or another key, fails.
func TestSignVerify(t *testing.T) {
	for name, key := range keys(t) {
		t.Run(name, func(t *testing.T) {
			pub, err := hoststate.PublicKeyFromCA(caPEM(t, key))
			if err != nil {
				t.Fatal(err)
			}
			ds := hoststate.Desired{Revision: 9, State: valid()}
			if err := ds.Sign(key); err != nil {
				t.Fatal(err)
			}
			digest, err := ds.Verify(pub)
			if err != nil || digest != ds.Signature.Digest || !strings.HasPrefix(digest, "sha256:") {
				t.Fatalf("in memory: digest %q, %v", digest, err)
			}
			b, err := json.MarshalIndent(ds, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			var back hoststate.Desired
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if d, err := back.Verify(pub); err != nil || d != digest {
				t.Fatalf("after JSON: digest %q (want %q), %v", d, digest, err)
			}

			// Changed after signing, in memory or in the text.
			changed := back
			changed.State.Peers[0].AllowedIPs = append(changed.State.Peers[0].AllowedIPs, netip.MustParsePrefix("100.64.0.99/32"))
			if _, err := changed.Verify(pub); !errors.Is(err, hoststate.ErrBadSignature) {
				t.Fatalf("changed state: %v, want ErrBadSignature", err)
			}
			edited := bytes.Replace(b, []byte("5432"), []byte("5433"), 1)
			var e hoststate.Desired
			if err := json.Unmarshal(edited, &e); err != nil {
				t.Fatal(err)
			}
			if _, err := e.Verify(pub); !errors.Is(err, hoststate.ErrBadSignature) {
				t.Fatalf("edited text: %v, want ErrBadSignature", err)
			}
			// The digest edited to match: the signature still fails.
			e.Signature.Digest = hoststate.Digest(mustCompact(t, e))
			if _, err := e.Verify(pub); !errors.Is(err, hoststate.ErrBadSignature) {
				t.Fatalf("edited text and digest: %v, want ErrBadSignature", err)
			}
			// Another key.
			for other, k := range keys(t) {
				opub, _ := hoststate.PublicKeyFromCA(caPEM(t, k))
				if _, err := back.Verify(opub); !errors.Is(err, hoststate.ErrBadSignature) {
					t.Errorf("verified with another %s key: %v", other, err)
				}
			}
			// None.
			back.Signature = nil
			if _, err := back.Verify(pub); !errors.Is(err, hoststate.ErrUnsigned) {
				t.Fatalf("unsigned: %v, want ErrUnsigned", err)
			}
		})
	}
}

func mustCompact(t *testing.T, d hoststate.Desired) []byte {
	t.Helper()
	c, err := d.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Fields of a newer minor schema, which this build does not decode, are
// covered by the signature and kept when the envelope is written again.
func TestSignatureCoversUnknownFields(t *testing.T) {
	key := keys(t)["ecdsa"]
	pub, _ := hoststate.PublicKeyFromCA(caPEM(t, key))
	state := []byte(`{"schema":"1.9","host":"s1","address":"198.18.0.1","vtepMAC":"02:00:00:00:00:01","someday":{"x":[1,2]}}`)
	sig, err := hoststate.SignBytes(key, state)
	if err != nil {
		t.Fatal(err)
	}
	sigJSON, _ := json.Marshal(sig)
	wire := []byte(`{"revision":3,"state":` + string(state) + `,"signature":` + string(sigJSON) + `}`)
	var ds hoststate.Desired
	if err := json.Unmarshal(wire, &ds); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Verify(pub); err != nil {
		t.Fatalf("newer minor state: %v", err)
	}
	disk, err := json.MarshalIndent(ds, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(disk, []byte(`"someday"`)) {
		t.Fatalf("unknown field dropped on the way to disk:\n%s", disk)
	}
	var back hoststate.Desired
	if err := json.Unmarshal(disk, &back); err != nil {
		t.Fatal(err)
	}
	if _, err := back.Verify(pub); err != nil {
		t.Fatalf("reloaded: %v", err)
	}
	// The unknown field edited: refused.
	var e hoststate.Desired
	if err := json.Unmarshal(bytes.Replace(disk, []byte("2"), []byte("3"), 1), &e); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Verify(pub); !errors.Is(err, hoststate.ErrBadSignature) {
		t.Fatalf("edited unknown field: %v, want ErrBadSignature", err)
	}
}
