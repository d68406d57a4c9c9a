package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// renewAt is when a certificate is renewed: at two thirds of its lifetime,
// leaving a third of it (four months of a year's certificate) for a
// control plane that is away.
func renewAt(id *Identity) time.Time {
	c := id.Certificate()
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) * 2 / 3)
}

// renewLoop renews the agent's client certificate over mTLS well before it
// expires, with a new TLS key, and from then on talks with the new one:
// the control-plane client is remade, the local API serves it. No join
// token is needed; a removed host is refused and keeps trying, saying so.
func (a *Agent) renewLoop(ctx context.Context) {
	if _, ok := a.controlPlane().(Renewer); !ok {
		a.log.Warn("this control-plane client cannot renew the certificate: it will be renewed only by joining again", "notAfter", a.identity().Certificate().NotAfter)
		return
	}
	bo := backoff{Min: a.cfg.BackoffMin, Max: a.cfg.BackoffMax}
	for ctx.Err() == nil {
		id := a.identity()
		a.m.certNotAfter.Set(float64(id.Certificate().NotAfter.Unix()))
		if wait := time.Until(renewAt(id)); wait > 0 {
			a.log.Debug("certificate renewal scheduled", "at", renewAt(id).Format(time.RFC3339), "notAfter", id.Certificate().NotAfter)
			if !sleepCtx(ctx, wait) {
				return
			}
		}
		if err := a.renew(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			wait := bo.next()
			a.log.Error("certificate renewal failed; retrying", "err", err, "notAfter", id.Certificate().NotAfter, "retryIn", wait.Round(time.Millisecond))
			a.m.renewals.WithLabelValues("error").Inc()
			sleepCtx(ctx, wait)
			continue
		}
		bo.reset()
	}
}

// renew gets and installs a new certificate.
func (a *Agent) renew(ctx context.Context) error {
	r, ok := a.controlPlane().(Renewer)
	if !ok {
		return fmt.Errorf("this control-plane client cannot renew certificates")
	}
	old := a.identity()
	keyPEM, csrPEM, err := NewKeyAndCSR(a.cfg.Name, a.cfg.Address)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	resp, err := r.Renew(rctx, a.cfg.Name, api.RenewRequest{CSR: string(csrPEM)})
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	id, err := ParseIdentity(keyPEM, []byte(resp.Certificate), []byte(resp.CA), a.cfg.Name, a.cfg.Now())
	if err != nil {
		return fmt.Errorf("renew answer: %w", err)
	}
	if !id.Certificate().NotAfter.After(old.Certificate().NotAfter) {
		return fmt.Errorf("renew answer: the new certificate expires at %s, no later than the current one", id.Certificate().NotAfter)
	}
	if err := id.Save(a.cfg.StateDir); err != nil {
		return err
	}
	cp, err := a.cfg.Connect(id)
	if err != nil {
		return fmt.Errorf("control plane client: %w", err)
	}
	a.mu.Lock()
	prev := a.cp
	a.cp, a.id = cp, id
	a.mu.Unlock()
	// corridor:// artifacts are fetched with the agent's certificate:
	// the renewed one from now on.
	a.useArtifactStore(cp)
	if c, ok := prev.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
	a.m.renewals.WithLabelValues("ok").Inc()
	a.log.Info("client certificate renewed", "notAfter", id.Certificate().NotAfter, "renewAt", renewAt(id).Format(time.RFC3339))
	return nil
}
