package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strconv"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
)

// join registers a server and signs its CSR. A join token holder may join
// under any name that was not removed; joining again under the same name
// (a reinstalled host) issues a new certificate, and the old one is
// refused from then on.
func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	var req api.JoinRequest
	if err := decodeJSON(w, r, s.cfg.MaxBody, &req); err != nil {
		return
	}
	if !tokenEqual(req.Token, s.joinToken) {
		writeError(w, http.StatusUnauthorized, "wrong join token: use the one in the server's data directory (join.token)")
		return
	}
	if !spec.ValidName(req.Name) {
		writeError(w, http.StatusUnprocessableEntity, "invalid join request", fmt.Sprintf("name: %q is not a valid server name (lower-case letters, digits and '-', starting with a letter)", req.Name))
		return
	}
	srv := spec.Server{
		Name: req.Name, Address: req.Address, Capacity: req.Capacity, Labels: req.Labels,
		PublicKey: req.PublicKey, WireGuardPort: req.WireGuardPort,
	}
	spec.SetServerDefaults(&srv)
	if errs := spec.ValidateServers([]spec.Server{srv}); len(errs) > 0 {
		writeError(w, http.StatusUnprocessableEntity, "invalid join request", errorLines(errs)...)
		return
	}
	certPEM, serial, err := s.ca.signClient(req.CSR, req.Name)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ev := api.Event{Who: "agent:" + req.Name, Action: "server.join", Object: "server/" + req.Name,
		Message: fmt.Sprintf("joined from %s with address %s", r.RemoteAddr, req.Address)}
	for attempt := 0; ; attempt++ {
		old, err := s.st.GetServer(r.Context(), req.Name)
		var expect int64
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		case old.Revoked:
			writeError(w, http.StatusForbidden, "server "+req.Name+" was removed by an operator and may not join again under that name")
			return
		default:
			expect = old.Revision
			if old.Server.State == spec.ServerDraining {
				srv.State = spec.ServerDraining
			}
			// A rotation asked of the server stands: the agent makes a
			// new key if its own is of an older generation.
			srv.KeyGeneration = old.Server.KeyGeneration
		}
		rec := store.ServerRecord{Server: srv, JoinedAt: time.Now().UTC(), CertSerial: serial}
		err = s.st.PutServer(r.Context(), rec, expect, &ev)
		if errors.Is(err, store.ErrConflict) && attempt < 10 {
			continue
		}
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		break
	}
	s.log.Info("server joined", "server", req.Name, "address", req.Address)
	writeJSON(w, http.StatusOK, api.JoinResponse{Certificate: string(certPEM), CA: string(s.ca.certPEM)})
}

// agentDesired is the long-poll: it answers at once when the host's
// revision differs from index, else when it changes or wait elapses (200
// with the same state either way; X-Corridor-Index carries the revision).
func (s *Server) agentDesired(w http.ResponseWriter, r *http.Request) {
	s.serveDesired(w, r, r.PathValue("name"), true)
}

// agentDesiredWithStatus is the long-poll that carries the agent's status
// (POST with the status as the body): the status is stored as POST
// .../status would store it, the answer's headers (X-Corridor-Status:
// stored) are sent at once, then the request waits as a GET would. An
// agent acknowledging a revision with its next long-poll makes a change
// cost two requests per host instead of three. A status that cannot be
// stored is answered with the error, before any wait: the agent sends it
// again.
func (s *Server) agentDesiredWithStatus(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var st api.Status
	if err := decodeJSON(w, r, s.cfg.MaxBody, &st); err != nil {
		return
	}
	if code, err := s.storeStatus(r.Context(), name, &st); err != nil {
		writeError(w, code, err.Error())
		return
	}
	w.Header().Set(api.HeaderStatus, "stored")
	s.serveDesired(w, r, name, true)
}

// hostDesired is the admin's view: never waits.
func (s *Server) hostDesired(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ds, err := s.st.GetDesired(r.Context(), name)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if ds.Revision == 0 {
		writeError(w, http.StatusNotFound, "no desired state for host "+name+" (not joined, removed, or not compiled yet)")
		return
	}
	if err := ds.Sign(s.ca.key); err != nil {
		writeError(w, http.StatusInternalServerError, "sign desired state: "+err.Error())
		return
	}
	w.Header().Set("X-Corridor-Index", strconv.FormatInt(ds.Revision, 10))
	writeJSON(w, http.StatusOK, ds)
}

func (s *Server) serveDesired(w http.ResponseWriter, r *http.Request, name string, mayWait bool) {
	q := r.URL.Query()
	var index int64
	if v := q.Get("index"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("index: %q is not a revision (a non-negative integer)", v))
			return
		}
		index = n
	}
	wait := DefaultWait
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("wait: %q is not a duration such as 60s", v))
			return
		}
		wait = d
	}
	wait = min(wait, s.cfg.MaxWait)
	if !mayWait {
		wait = 0
	}
	if wait > 0 {
		// The server's read and write timeouts are for ordinary requests;
		// this one may legitimately stay quiet for wait. The read deadline
		// matters too: when it passes, net/http's background read fails and
		// cancels the request's context.
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(wait + 30*time.Second))
		_ = rc.SetWriteDeadline(time.Now().Add(wait + 30*time.Second))
	}
	select {
	case <-s.hub.ready:
	case <-r.Context().Done():
		return
	}
	// An answer that says a carried status is stored says so before it
	// waits: the agent knows its report is in without waiting for the
	// next revision. The revision then comes in the body and in a
	// trailer.
	flushed := false
	if w.Header().Get(api.HeaderStatus) != "" && wait > 0 {
		w.Header()["Content-Type"] = []string{"application/json"}
		w.Header()["Trailer"] = []string{"X-Corridor-Index"}
		w.WriteHeader(http.StatusOK)
		if err := http.NewResponseController(w).Flush(); err != nil {
			return
		}
		flushed = true
	}
	s.m.waiters.Inc()
	data, rev := s.hub.wait(r.Context(), name, index, wait)
	s.m.waiters.Dec()
	if r.Context().Err() != nil {
		return
	}
	c, err := s.signer.signed(name, rev, data)
	if err != nil {
		if flushed {
			// The headers are gone: cut the answer, the agent polls again.
			panic(http.ErrAbortHandler)
		}
		writeError(w, http.StatusInternalServerError, "sign desired state: "+err.Error())
		return
	}
	idx := strconv.FormatInt(rev, 10)
	h := w.Header()
	if flushed {
		h[http.TrailerPrefix+"X-Corridor-Index"] = []string{idx}
	} else {
		h["Content-Type"] = []string{"application/json"}
		h["X-Corridor-Index"] = []string{idx}
		h["Content-Length"] = []string{strconv.Itoa(len(`{"revision":,"state":`) + len(idx) + len(c.data) + len(c.tail))}
	}
	// The stored bytes are the state, and what is signed: no decode and
	// encode per waiter; the signature's JSON is encoded once per
	// revision (signedState.tail).
	_, _ = io.WriteString(w, `{"revision":`+idx+`,"state":`)
	_, _ = w.Write(c.data)
	_, _ = w.Write(c.tail)
}

// agentStatus stores a heartbeat. When the agent reports a new address,
// WireGuard key or port, capacity or labels, the server record follows
// (key rotation), which recompiles.
func (s *Server) agentStatus(w http.ResponseWriter, r *http.Request) {
	var st api.Status
	if err := decodeJSON(w, r, s.cfg.MaxBody, &st); err != nil {
		return
	}
	if code, err := s.storeStatus(r.Context(), r.PathValue("name"), &st); err != nil {
		writeError(w, code, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// storeStatus stores the status of agent name and does what a report
// sets off; it returns once the status is committed (a report answered
// without error is never lost), or the HTTP code and error to answer.
// Both ways of reporting (POST .../status, and the long-poll that
// carries a status) go through it.
func (s *Server) storeStatus(ctx context.Context, name string, st *api.Status) (int, error) {
	if st.Name == "" {
		st.Name = name
	}
	if st.Name != name {
		return http.StatusForbidden, fmt.Errorf("status names server %q; an agent may report only its own (%s)", st.Name, name)
	}
	if err := s.st.PutStatus(ctx, store.StatusRecord{Status: *st, Received: time.Now().UTC()}); err != nil {
		return http.StatusServiceUnavailable, err
	}
	s.noteApplied(ctx, *st)
	if err := s.followStatus(ctx, *st); err != nil {
		s.log.Warn("update server from status", "server", name, "err", err)
	}
	if s.ctrl.rotating.Load() || st.NextPublicKey != "" {
		s.ctrl.kickRotation() // a key rotation moves on from reports
	}
	return 0, nil
}

func (s *Server) followStatus(ctx context.Context, st api.Status) error {
	ev := api.Event{Who: "agent:" + st.Name, Action: "server.update", Object: "server/" + st.Name}
	follow := func(rec *store.ServerRecord) (bool, error) {
		next := rec.Server
		if st.Address != "" {
			next.Address = st.Address
		}
		// During a key rotation the controller alone sets the key (at
		// its commit): a report sent before the host took the new key
		// must not bring the old one back.
		if st.PublicKey != "" && rec.Server.Rotation == nil {
			next.PublicKey = st.PublicKey
		}
		if next.PublicKey != rec.Server.PublicKey {
			rec.KeyChangedAt = time.Now().UTC()
		}
		if st.WireGuardPort != 0 {
			next.WireGuardPort = st.WireGuardPort
		}
		if st.Capacity.CPU != 0 || st.Capacity.Memory != 0 {
			next.Capacity = st.Capacity
		}
		if st.Labels != nil {
			next.Labels = st.Labels
		}
		if next.Address == rec.Server.Address && next.PublicKey == rec.Server.PublicKey &&
			next.WireGuardPort == rec.Server.WireGuardPort && next.Capacity == rec.Server.Capacity &&
			maps.Equal(next.Labels, rec.Server.Labels) {
			return false, nil
		}
		if errs := spec.ValidateServers([]spec.Server{next}); len(errs) > 0 {
			return false, fmt.Errorf("reported server fields are invalid: %w", errs)
		}
		ev.Message = fmt.Sprintf("server fields changed (address %s, wireguard port %d)", next.Address, next.WireGuardPort)
		rec.Server = next
		return true, nil
	}
	// Most statuses change nothing: tell from the mirror's copy of the
	// record, without a read from etcd per heartbeat (10,000 hosts
	// acknowledging one change are 10,000 statuses).
	if rec, ok := s.ctrl.mirror.Server(st.Name); ok {
		if changed, err := follow(&rec); err == nil && !changed {
			return nil
		}
	}
	_, err := s.st.UpdateServer(ctx, st.Name, follow, &ev)
	return err
}
