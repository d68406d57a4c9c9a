package report

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/corridor-dev/corridor/internal/casign"

	"github.com/corridor-dev/corridor/internal/api"
)

// SignContext separates a report signature from anything else the CA key
// signs (certificates, host states).
const SignContext = "corridor evidence report v1\x00"

// Signature algorithms, after the CA key's type.
const (
	AlgECDSASHA256 = casign.AlgECDSASHA256
	AlgEd25519     = casign.AlgEd25519
)

// ErrBadSignature means a report's signature does not verify with the CA
// certificate given: the report was edited after it was signed, or was
// signed by another CA.
var ErrBadSignature = errors.New("report: bad signature")

// Canonical is the report's canonical JSON: what is signed.
func Canonical(r *Report) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("report: encode: %w", err)
	}
	return b, nil
}

// Digest is "sha256:" + hex of b.
func Digest(b []byte) string { return casign.Digest(b) }

// Sign signs r's canonical JSON with key (the CA's: ECDSA or Ed25519);
// caDER is the CA certificate, whose fingerprint the signature names.
func Sign(key crypto.Signer, caDER []byte, r *Report) (api.SignedReport, error) {
	c, err := Canonical(r)
	if err != nil {
		return api.SignedReport{}, err
	}
	sig := &api.ReportSignature{Digest: Digest(c), CA: Digest(caDER)}
	if sig.Alg, sig.Value, err = casign.Sign(key, SignContext, c); err != nil {
		return api.SignedReport{}, fmt.Errorf("report: sign: %w", err)
	}
	return api.SignedReport{Report: c, Signature: sig}, nil
}

// VerifySigned checks s's signature with the CA certificate caPEM and
// returns the report it covers. The error wraps ErrBadSignature when the
// signature does not hold.
func VerifySigned(s api.SignedReport, caPEM []byte) (*Report, error) {
	cert, err := caCert(caPEM)
	if err != nil {
		return nil, err
	}
	if s.Signature == nil {
		return nil, fmt.Errorf("%w: the report carries no signature", ErrBadSignature)
	}
	c := []byte(s.Report)
	if fp := Digest(cert.Raw); s.Signature.CA != fp {
		return nil, fmt.Errorf("%w: the report says it was signed by CA %s, the CA given is %s", ErrBadSignature, s.Signature.CA, fp)
	}
	if d := Digest(c); d != s.Signature.Digest {
		return nil, fmt.Errorf("%w: the report's digest is %s, the signature was made for %s (the report was edited after it was signed)",
			ErrBadSignature, d, s.Signature.Digest)
	}
	ok, err := casign.Verify(cert.PublicKey, SignContext, c, s.Signature.Alg, s.Signature.Value)
	if err != nil {
		return nil, fmt.Errorf("%w: the CA's key: %v", ErrBadSignature, err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: the %s signature does not verify with the key of the CA given (%s; the report names %s)",
			ErrBadSignature, s.Signature.Alg, Digest(cert.Raw), s.Signature.CA)
	}
	var r Report
	dec := json.NewDecoder(bytes.NewReader(c))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("report: the signed report does not decode: %w", err)
	}
	if r.Format != Format {
		return nil, fmt.Errorf("report: format %q, this build reads %q", r.Format, Format)
	}
	return &r, nil
}

func caCert(caPEM []byte) (*x509.Certificate, error) {
	cert, err := casign.Certificate(caPEM)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	return cert, nil
}

// EncodeJSON is the JSON file form of a signed report: its one canonical
// encoding and a newline. VerifyFile accepts exactly these bytes.
func EncodeJSON(s api.SignedReport) ([]byte, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("report: encode: %w", err)
	}
	return append(b, '\n'), nil
}
