package server

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// stateSigner signs hosts' desired states with the cluster CA's key as they
// are served (hoststate.SignBytes over the stored bytes), one signature per
// host and revision, and remembers which hosts reported applying a state
// whose digest differs from the one served at that revision.
//
// States are signed when served rather than when written: the stored bytes
// are what is signed, a state stored before signing existed is signed all
// the same, and the empty state of a host with none is too.
type stateSigner struct {
	key      crypto.Signer
	tampered *prometheus.GaugeVec

	mu    sync.Mutex
	cache map[string]signedState // host -> its last signed revision
	flag  map[string]string      // host -> the applied digest flagged
}

type signedState struct {
	rev  int64
	data []byte // the state as served
	sig  *hoststate.Signature
	// tail is the end of the long-poll's answer after the state:
	// `,"signature":<sig JSON>}` and a newline, encoded once per
	// host and revision however many times it is served.
	tail []byte
}

func newStateSigner(key crypto.Signer, reg prometheus.Registerer) *stateSigner {
	s := &stateSigner{
		key: key,
		tampered: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "corridor", Name: "host_tampered",
			Help: "1 for a server whose agent reports applying a state whose digest differs from the desired state the control plane signed at that revision.",
		}, []string{"server"}),
		cache: map[string]signedState{},
		flag:  map[string]string{},
	}
	reg.MustRegister(s.tampered)
	return s
}

// state is host's desired state as served (data, the stored bytes; nil for
// none: the empty state) with its signature.
func (s *stateSigner) state(host string, rev int64, data []byte) ([]byte, *hoststate.Signature, error) {
	c, err := s.signed(host, rev, data)
	if err != nil {
		return nil, nil, err
	}
	return c.data, c.sig, nil
}

// signed is state's cache entry for host at rev: the state as served, its
// signature, and the answer's tail.
func (s *stateSigner) signed(host string, rev int64, data []byte) (signedState, error) {
	s.mu.Lock()
	c, ok := s.cache[host]
	s.mu.Unlock()
	if ok && c.rev == rev && (rev != 0 || data == nil) {
		return c, nil
	}
	if data == nil {
		empty, err := json.Marshal(hoststate.Empty(host))
		if err != nil {
			return signedState{}, err
		}
		data = empty
	}
	var canon bytes.Buffer
	if err := json.Compact(&canon, data); err != nil {
		return signedState{}, fmt.Errorf("stored desired state of %s: %w", host, err)
	}
	sig, err := hoststate.SignBytes(s.key, canon.Bytes())
	if err != nil {
		return signedState{}, err
	}
	sigJSON, err := json.Marshal(sig)
	if err != nil {
		return signedState{}, fmt.Errorf("encode signature: %w", err)
	}
	c = signedState{rev: rev, data: data, sig: sig, tail: append(append([]byte(`,"signature":`), sigJSON...), "}\n"...)}
	s.mu.Lock()
	if old, ok := s.cache[host]; !ok || old.rev <= rev {
		s.cache[host] = c
	}
	s.mu.Unlock()
	return c, nil
}

// check compares the digest an agent reports applied with the digest of
// the state served at that revision (rev, data: the current one; other
// revisions are not compared). It returns a message when they differ, and
// changed when that is news (a new mismatch, or one cleared).
func (s *stateSigner) check(host string, st api.Status, rev int64, data []byte) (msg string, changed bool) {
	if st.AppliedDigest == "" || st.AppliedRevision != rev {
		return "", false // an agent of before signing, or not comparable
	}
	_, sig, err := s.state(host, rev, data)
	if err != nil {
		return "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, flagged := s.flag[host]
	if st.AppliedDigest == sig.Digest {
		if flagged {
			delete(s.flag, host)
			s.tampered.WithLabelValues(host).Set(0)
		}
		return "", flagged
	}
	s.flag[host] = st.AppliedDigest
	s.tampered.WithLabelValues(host).Set(1)
	return tamperedMessage(rev, st.AppliedDigest, sig.Digest), !flagged || prev != st.AppliedDigest
}

func tamperedMessage(rev int64, applied, desired string) string {
	return fmt.Sprintf("applied state at revision %d has digest %s, the control plane signed %s: the host runs a state the control plane did not give it",
		rev, applied, desired)
}

// noteApplied flags a host whose agent reports applying, at the desired
// revision, a state of another digest: an event (host.tampered, and
// host.untampered once it matches again), a log line and the metric
// corridor_host_tampered{server}.
func (s *Server) noteApplied(ctx context.Context, st api.Status) {
	data, rev := s.hub.wait(ctx, st.Name, -1, 0)
	msg, changed := s.signer.check(st.Name, st, rev, data)
	if !changed {
		return
	}
	ev := api.Event{Who: "agent:" + st.Name, Action: "host.tampered", Object: "server/" + st.Name, Message: msg}
	if msg == "" {
		ev.Action, ev.Message = "host.untampered", fmt.Sprintf("applied state at revision %d matches the signed desired state again", st.AppliedRevision)
		s.log.Info("host applies its signed desired state again", "server", st.Name, "revision", st.AppliedRevision)
	} else {
		s.log.Warn("host applied a state the control plane did not sign", "server", st.Name, "revision", rev, "applied", st.AppliedDigest)
	}
	if err := s.st.AppendEvent(ctx, ev); err != nil {
		s.log.Warn("record event", "err", err)
	}
}

// tamperedView is the message `get servers` shows for a host whose applied
// digest differs from the desired one at the same revision ("" if none).
func (s *Server) tamperedView(ctx context.Context, host string, st api.Status) (desired, msg string) {
	data, rev := s.hub.wait(ctx, host, -1, 0)
	_, sig, err := s.signer.state(host, rev, data)
	if err != nil {
		return "", ""
	}
	if st.AppliedDigest != "" && st.AppliedRevision == rev && st.AppliedDigest != sig.Digest {
		msg = tamperedMessage(rev, st.AppliedDigest, sig.Digest)
	}
	return sig.Digest, msg
}
