package agent

import (
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// validateState checks a desired state before it is kept or applied, with
// the host-state contract's one Validate: the whole state is refused on any
// error (a newer major schema included), so that the host stays on its last
// good state. Errors name the field.
func (a *Agent) validateState(st compile.HostState) error {
	return hoststate.Validate(st, hoststate.Options{
		Host:        a.cfg.Name,
		Runtimes:    a.cfg.Runtimes,
		ServerAddrs: a.cfg.ServerAddrs,
		Dataplane:   a.cfg.ValidateDataplane,
	})
}

// Where a refused desired state came from, as the rejection counter says.
const (
	sourceServer = "server"
	sourceDisk   = "disk"
)

// checkDesired is the agent's whole check of a desired state, received or
// loaded from disk: the control plane's signature first (with the cluster
// CA's key), then validateState, whose app-network check holds whatever the
// signature says. It returns the digest of the state, which the agent
// reports once it has applied it. A refusal is counted by source and reason.
func (a *Agent) checkDesired(ds *api.DesiredState, source string) (string, error) {
	digest, err := ds.Verify(a.stateKey())
	if err == nil {
		err = a.validateState(ds.State)
	}
	if err != nil {
		a.m.desiredRejected.WithLabelValues(source, rejectReason(err)).Inc()
		return "", err
	}
	return digest, nil
}

func rejectReason(err error) string {
	switch {
	case errors.Is(err, hoststate.ErrUnsigned):
		return "unsigned"
	case errors.Is(err, hoststate.ErrBadSignature):
		return "bad_signature"
	case errors.Is(err, hoststate.ErrNewerSchema):
		return "newer_schema"
	default:
		return "invalid"
	}
}

// stateKey is the key that verifies desired states: the cluster CA's
// public key, from the CA the agent got at join (nil before it has one).
func (a *Agent) stateKey() crypto.PublicKey {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.caKey
}

// setStateKey takes the state-verification key from the cluster CA's
// certificate (PEM).
func (a *Agent) setStateKey(caPEM []byte) error {
	k, err := hoststate.PublicKeyFromCA(caPEM)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.caKey = k
	a.mu.Unlock()
	return nil
}

// loadStateKey reads the cluster CA kept from the join (ca.crt), so that
// the stored desired state can be verified at start, before the server is
// asked anything. An agent that joined before states were signed has it
// too. Without it nothing stored is applied.
func (a *Agent) loadStateKey() {
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, CAFile))
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err == nil {
		err = a.setStateKey(b)
	}
	if err != nil {
		a.log.Error("cannot read the cluster CA: stored desired state cannot be verified", "err", fmt.Errorf("%s: %w", CAFile, err))
	}
}
