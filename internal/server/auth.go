package server

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/corridor-dev/corridor/internal/store"
)

type authKind int

const (
	authNone  authKind = iota
	authAdmin          // Authorization: Bearer <admin token>
	authAgent          // client certificate, CN = {name} of the path
)

type ctxKey int

const whoKey ctxKey = 0

// who is the authenticated caller: "admin" or "agent:<name>".
func who(r *http.Request) string {
	if w, ok := r.Context().Value(whoKey).(string); ok {
		return w
	}
	return "anonymous"
}

func (s *Server) authenticate(kind authKind, next http.HandlerFunc) http.HandlerFunc {
	switch kind {
	case authAdmin:
		return func(w http.ResponseWriter, r *http.Request) {
			h := r.Header.Get("Authorization")
			tok, ok := strings.CutPrefix(h, "Bearer ")
			if h == "" || !ok {
				w.Header().Set("WWW-Authenticate", `Bearer realm="corridor"`)
				writeError(w, http.StatusUnauthorized, "missing admin token: send Authorization: Bearer <token> (the token is in the server's data directory, admin.token)")
				return
			}
			if !tokenEqual(strings.TrimSpace(tok), s.adminToken) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="corridor", error="invalid_token"`)
				writeError(w, http.StatusUnauthorized, "wrong admin token")
				return
			}
			next(w, r.WithContext(context.WithValue(r.Context(), whoKey, "admin")))
		}
	case authAgent:
		return func(w http.ResponseWriter, r *http.Request) {
			if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.PeerCertificates) == 0 {
				writeError(w, http.StatusUnauthorized, "agent routes need the client certificate obtained by joining (POST /v1/join)")
				return
			}
			cert := r.TLS.PeerCertificates[0]
			name := r.PathValue("name")
			if cert.Subject.CommonName != name {
				writeError(w, http.StatusForbidden, "certificate of "+cert.Subject.CommonName+" may not act for server "+name)
				return
			}
			serial := cert.SerialNumber.Text(16)
			// Most requests pass: checked against the mirror's copy of the
			// record (no etcd read per poll and per report, two per host
			// per change); anything but a pass is checked again in etcd,
			// so that a mirror a watch event behind never refuses.
			if rec, ok := s.ctrl.mirror.FreshServer(name); ok && agentAllowed(&rec, serial) {
				next(w, r.WithContext(context.WithValue(r.Context(), whoKey, "agent:"+name)))
				return
			}
			rec, err := s.st.GetServer(r.Context(), name)
			if errors.Is(err, store.ErrNotFound) {
				writeError(w, http.StatusForbidden, "server "+name+" is not registered: join again")
				return
			}
			if err != nil {
				writeError(w, http.StatusServiceUnavailable, "read server record: "+err.Error())
				return
			}
			if rec.Revoked {
				writeError(w, http.StatusForbidden, "server "+name+" was removed by an operator")
				return
			}
			if !agentAllowed(rec, serial) {
				writeError(w, http.StatusForbidden, "certificate of "+name+" was superseded by a later join")
				return
			}
			next(w, r.WithContext(context.WithValue(r.Context(), whoKey, "agent:"+name)))
		}
	default:
		return next
	}
}

// agentAllowed: the record lets the agent holding the certificate of this
// serial (hex) in: not revoked, and the serial is the record's or the one
// before it (a re-join's overlap), or the record names none.
func agentAllowed(rec *store.ServerRecord, serial string) bool {
	return !rec.Revoked && (rec.CertSerial == "" || rec.CertSerial == serial || rec.PrevCertSerial == serial)
}
