package server

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/store"
)

// agentRenew signs a new certificate for an agent that holds a valid one:
// authAgent has checked that the caller's certificate is this server's
// current (or just replaced) one and that the server was not removed, so
// no join token is needed, and a revoked host is refused (403). The new
// certificate becomes the current one; the one presented stays accepted
// until it expires (the agent may not have received the answer).
func (s *Server) agentRenew(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req api.RenewRequest
	if err := decodeJSON(w, r, s.cfg.MaxBody, &req); err != nil {
		return
	}
	certPEM, serial, err := s.ca.signClient(req.CSR, name)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	presented := r.TLS.PeerCertificates[0].SerialNumber.Text(16)
	ev := api.Event{Who: "agent:" + name, Action: "server.renew", Object: "server/" + name,
		Message: fmt.Sprintf("client certificate renewed (serial %s replaces %s)", serial, presented)}
	errRevoked := errors.New("revoked")
	_, err = s.st.UpdateServer(r.Context(), name, func(rec *store.ServerRecord) (bool, error) {
		if rec.Revoked {
			return false, errRevoked
		}
		rec.PrevCertSerial = presented
		rec.CertSerial = serial
		return true, nil
	}, &ev)
	switch {
	case errors.Is(err, errRevoked):
		writeError(w, http.StatusForbidden, "server "+name+" was removed by an operator")
		return
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusForbidden, "server "+name+" is not registered: join again")
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	s.log.Info("agent certificate renewed", "server", name, "serial", serial)
	writeJSON(w, http.StatusOK, api.JoinResponse{Certificate: string(certPEM), CA: string(s.ca.certPEM)})
}
