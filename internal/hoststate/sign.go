package hoststate

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/corridor-dev/corridor/internal/casign"
)

// Signing. The control plane signs every host's desired state with the key
// of its cluster CA; agents verify it with the CA certificate's public key,
// which they keep from their join (ca.crt). No new key is distributed and
// no host key ever signs a state.
//
// What is signed is the state's canonical encoding: the compact JSON of
// the State (no insignificant white space), exactly as the server stored
// it (compile's json.Marshal), prefixed by SignContext. The envelope keeps
// those bytes as they were: a Desired decoded from JSON remembers the
// state's bytes and writes them back unchanged, so that fields of a newer
// minor schema, which this build does not decode, are still covered by
// the signature. Indentation (desired.json is indented) is removed before
// verifying; any other change, a space inside a string included, breaks
// the signature.
//
// The revision is not signed: it is the etcd revision, known only once the
// state is stored, and an old state replayed under another revision is
// caught by the server, which compares the digest the agent reports
// applied with the digest of the state it serves at that revision.

// SignContext separates a host-state signature from anything else the CA
// key signs (certificates).
const SignContext = "corridor host-state signature v1\x00"

// Signature algorithms, after the CA key's type.
const (
	AlgECDSASHA256 = casign.AlgECDSASHA256 // ASN.1 DER signature of SHA-256(SignContext+state)
	AlgEd25519     = casign.AlgEd25519     // over SignContext+state
)

var (
	// ErrUnsigned means a state carries no signature.
	ErrUnsigned = errors.New("hoststate: state is not signed")
	// ErrBadSignature means a state's signature does not verify with the
	// cluster CA's key: the state was changed after it was signed, or was
	// signed by another key.
	ErrBadSignature = errors.New("hoststate: bad signature")
)

// Signature is the control plane's signature of a state.
type Signature struct {
	Alg string `json:"alg"`
	// Digest is "sha256:" and the hex SHA-256 of the state's canonical
	// encoding, as the agent reports it applied. Informative: verifiers
	// compute it again.
	Digest string `json:"digest"`
	Value  []byte `json:"value"` // base64 in JSON
}

// UnmarshalJSON decodes an envelope and remembers the bytes of its state,
// which are what a signature covers.
func (d *Desired) UnmarshalJSON(b []byte) error {
	var env struct {
		Revision  int64           `json:"revision"`
		State     json.RawMessage `json:"state"`
		Signature *Signature      `json:"signature"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return err
	}
	*d = Desired{Revision: env.Revision, Signature: env.Signature}
	if len(env.State) == 0 || string(env.State) == "null" {
		return nil
	}
	var c bytes.Buffer
	if err := json.Compact(&c, env.State); err != nil {
		return err
	}
	if err := json.Unmarshal(c.Bytes(), &d.State); err != nil {
		return err
	}
	d.stateJSON = c.Bytes()
	return nil
}

// MarshalJSON writes an envelope. The state is written as the bytes it was
// decoded from when it has not changed since, else encoded afresh.
func (d Desired) MarshalJSON() ([]byte, error) {
	state, err := d.Canonical()
	if err != nil {
		return nil, err
	}
	return json.Marshal(struct {
		Revision  int64           `json:"revision"`
		State     json.RawMessage `json:"state"`
		Signature *Signature      `json:"signature,omitempty"`
	}{d.Revision, state, d.Signature})
}

// Canonical is the canonical encoding of d.State, the bytes a signature
// covers: those it was decoded from, compacted, while State still is what
// they decode to; else State's compact JSON.
func (d *Desired) Canonical() ([]byte, error) {
	if d.stateJSON != nil {
		var st State
		if err := json.Unmarshal(d.stateJSON, &st); err == nil && reflect.DeepEqual(st, d.State) {
			return d.stateJSON, nil
		}
	}
	b, err := json.Marshal(d.State)
	if err != nil {
		return nil, fmt.Errorf("hoststate: encode state: %w", err)
	}
	return b, nil
}

// Digest is the digest of a canonical encoding, as Signature.Digest and
// the agent's status carry it: "sha256:" and 64 hex digits.
func Digest(canonical []byte) string { return casign.Digest(canonical) }

// SignBytes signs a state's canonical encoding (a compact JSON State, as
// the server stores it) with key, an ECDSA or Ed25519 private key.
func SignBytes(key crypto.Signer, canonical []byte) (*Signature, error) {
	alg, v, err := casign.Sign(key, SignContext, canonical)
	if err != nil {
		return nil, fmt.Errorf("hoststate: sign state: %w", err)
	}
	return &Signature{Digest: Digest(canonical), Alg: alg, Value: v}, nil
}

// Sign signs d's state with key and sets d.Signature.
func (d *Desired) Sign(key crypto.Signer) error {
	c, err := d.Canonical()
	if err != nil {
		return err
	}
	sig, err := SignBytes(key, c)
	if err != nil {
		return err
	}
	d.Signature, d.stateJSON = sig, c
	return nil
}

// Verify checks d's signature with pub, the cluster CA's public key
// (PublicKeyFromCA), and returns the digest of the state. The error wraps
// ErrUnsigned or ErrBadSignature.
func (d *Desired) Verify(pub crypto.PublicKey) (digest string, err error) {
	if d.Signature == nil {
		return "", ErrUnsigned
	}
	c, err := d.Canonical()
	if err != nil {
		return "", err
	}
	digest = Digest(c)
	if d.Signature.Digest != digest {
		return "", fmt.Errorf("%w: the state's digest is %s, the signature was made for %s (the state was changed after it was signed)",
			ErrBadSignature, digest, d.Signature.Digest)
	}
	if pub == nil {
		return "", fmt.Errorf("%w: no cluster CA key to verify it with (ca.crt missing: the agent has not joined yet)", ErrBadSignature)
	}
	ok, err := casign.Verify(pub, SignContext, c, d.Signature.Alg, d.Signature.Value)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if !ok {
		return "", fmt.Errorf("%w: %s signature does not verify with the cluster CA's key (signed by another key, or changed after signing)",
			ErrBadSignature, d.Signature.Alg)
	}
	return digest, nil
}

// PublicKeyFromCA is the key that verifies states: the public key of the
// cluster CA certificate (PEM; the first certificate is used).
func PublicKeyFromCA(caPEM []byte) (crypto.PublicKey, error) {
	cert, err := casign.Certificate(caPEM)
	if err != nil {
		return nil, fmt.Errorf("hoststate: %w", err)
	}
	switch k := cert.PublicKey.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey:
		return k, nil
	default:
		return nil, fmt.Errorf("hoststate: the CA's %T key cannot verify states: ECDSA or Ed25519 only", k)
	}
}
