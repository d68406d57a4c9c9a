// Package casign signs and verifies bytes with the cluster CA's key
// (ECDSA P-256 with SHA-256, or Ed25519), each kind of signed thing under
// a context string of its own so that a signature of one is never valid as
// another. Host states (hoststate) and evidence reports (report) use it.
package casign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
)

// Signature algorithms, after the CA key's type.
const (
	AlgECDSASHA256 = "ecdsa-sha256"
	AlgEd25519     = "ed25519"
)

// Digest is "sha256:" and the hex SHA-256 of b.
func Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Sign signs context followed by msg with key and returns the algorithm
// and the signature.
func Sign(key crypto.Signer, context string, msg []byte) (alg string, sig []byte, err error) {
	m := append([]byte(context), msg...)
	switch key.Public().(type) {
	case *ecdsa.PublicKey:
		h := sha256.Sum256(m)
		alg = AlgECDSASHA256
		sig, err = key.Sign(rand.Reader, h[:], crypto.SHA256)
	case ed25519.PublicKey:
		alg = AlgEd25519
		sig, err = key.Sign(rand.Reader, m, crypto.Hash(0))
	default:
		return "", nil, fmt.Errorf("cannot sign with a %T key: ECDSA or Ed25519 only", key.Public())
	}
	return alg, sig, err
}

// Verify tells whether sig, of algorithm alg, signs context followed by
// msg under pub. The error is for a key it cannot verify with.
func Verify(pub crypto.PublicKey, context string, msg []byte, alg string, sig []byte) (bool, error) {
	m := append([]byte(context), msg...)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		h := sha256.Sum256(m)
		return alg == AlgECDSASHA256 && ecdsa.VerifyASN1(k, h[:], sig), nil
	case ed25519.PublicKey:
		return alg == AlgEd25519 && ed25519.Verify(k, m, sig), nil
	default:
		return false, fmt.Errorf("cannot verify with a %T key: ECDSA or Ed25519 only", pub)
	}
}

// Certificate is the first certificate of a PEM file.
func Certificate(caPEM []byte) (*x509.Certificate, error) {
	for rest := caPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("no PEM certificate in the CA file")
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA certificate: %w", err)
		}
		return cert, nil
	}
}
