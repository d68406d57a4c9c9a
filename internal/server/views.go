package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
)

func (s *Server) serverViews(sn *store.Snapshot, statuses map[string]store.StatusRecord) []api.Server {
	_, states := fleet(sn, s.hub.lastSeen(), time.Now(), s.started, s.cfg.HeartbeatTimeout)
	tasks := map[string]int{}
	for _, p := range sn.Placement {
		for _, t := range p.Tasks {
			tasks[t.Server]++
		}
	}
	out := make([]api.Server, 0, len(sn.Servers))
	for _, rec := range sn.Servers {
		name := rec.Server.Name
		v := s.hub.view(name)
		sv := api.Server{
			Spec: rec.Server, JoinedAt: rec.JoinedAt, State: states[name],
			LastSeen: v.LastSeen, DesiredRevision: v.DesiredRevision, AppliedRevision: v.AppliedRevision,
			Tasks: tasks[name],
		}
		if st, ok := statuses[name]; ok {
			sv.Errors = st.Status.Errors
			sv.AppliedRevision = st.Status.AppliedRevision
			sv.KeyGeneration = st.Status.KeyGeneration
			sv.LastSeen = st.Received
			sv.AppliedDigest = st.Status.AppliedDigest
			sv.ControlPlane = st.Status.ControlPlane
			sv.WireGuardMode = st.Status.WireGuardMode
			sv.FlowOffload, sv.OffloadedFlows = st.Status.FlowOffload, st.Status.OffloadedFlows
			if sv.State == spec.ServerReady && st.Status.NotReady != "" {
				sv.State = api.ServerNotReady
			}
		}
		sv.DesiredDigest, sv.Tampered = s.tamperedView(context.Background(), name, statuses[name].Status)
		if sv.Tampered != "" {
			sv.Errors = append(sv.Errors, sv.Tampered)
		}
		out = append(out, sv)
	}
	return out
}

// loadViewState loads what the read views are made of: the stored state
// and the last status of every server. When it fails it has answered the
// request, and ok is false.
func (s *Server) loadViewState(w http.ResponseWriter, r *http.Request) (sn *store.Snapshot, statuses map[string]store.StatusRecord, ok bool) {
	sn, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, err)
		return nil, nil, false
	}
	statuses, err = s.st.Statuses(r.Context())
	if err != nil {
		writeErr(w, err)
		return nil, nil, false
	}
	return sn, statuses, true
}

func writeNoServer(w http.ResponseWriter, name string) {
	writeError(w, http.StatusNotFound, "no server named "+name+" (see `corridor get servers`)")
}

func (s *Server) listServers(w http.ResponseWriter, r *http.Request) {
	sn, statuses, ok := s.loadViewState(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, s.serverViews(sn, statuses))
}

func (s *Server) getServer(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	sn, statuses, ok := s.loadViewState(w, r)
	if !ok {
		return
	}
	for _, v := range s.serverViews(sn, statuses) {
		if v.Spec.Name == name {
			writeJSON(w, http.StatusOK, v)
			return
		}
	}
	writeNoServer(w, name)
}

// removeServer revokes a server: its certificate is refused from now on,
// it may not join again under that name, and the controller places its
// tasks elsewhere.
func (s *Server) removeServer(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ev := api.Event{Who: who(r), Action: "server.remove", Object: "server/" + name, Message: "removed; its certificate is refused from now on and its tasks are placed elsewhere"}
	_, err := s.st.UpdateServer(r.Context(), name, func(rec *store.ServerRecord) (bool, error) {
		if rec.Revoked {
			return false, nil
		}
		rec.Revoked, rec.RevokedAt, rec.RevokedBy = true, time.Now().UTC(), who(r)
		return true, nil
	}, &ev)
	if errors.Is(err, store.ErrNotFound) {
		writeNoServer(w, name)
		return
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// rotateKey raises the server's key generation; the controller runs the
// hitless rotation to it (rotation.go): the agent makes the next key pair
// on its host and reports the public key, the peers hold it beside the
// current one, then it replaces it. The private key never leaves the host.
func (s *Server) rotateKey(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	err := askKeyRotation(r.Context(), s.st, name, who(r), "")
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeNoServer(w, name)
		return
	case errors.Is(err, errRevoked):
		writeError(w, http.StatusConflict, "server "+name+" was removed: it has no key to rotate")
		return
	case err != nil:
		writeErr(w, err)
		return
	}
	s.log.Info("WireGuard key rotation asked", "server", name, "by", who(r))
	s.ctrl.kickRotation()
	s.getServer(w, r)
}

var errRevoked = errors.New("server removed")

// askKeyRotation raises the key generation of server name, for the API
// and for the controller's scheduled rotations.
func askKeyRotation(ctx context.Context, st *store.Store, name, by, why string) error {
	ev := api.Event{Who: by, Action: "server.rotate-key", Object: "server/" + name}
	_, err := st.UpdateServer(ctx, name, func(rec *store.ServerRecord) (bool, error) {
		if rec.Revoked {
			return false, errRevoked
		}
		rec.Server.KeyGeneration++
		ev.Message = fmt.Sprintf("WireGuard key rotation asked: generation %d%s", rec.Server.KeyGeneration, why)
		return true, nil
	}, &ev)
	return err
}

func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) {
	sn, statuses, ok := s.loadViewState(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	writeJSON(w, http.StatusOK, taskInfos(sn, statuses, q.Get("app"), q.Get("server"), q.Get("task")))
}

// taskInfos are the placed tasks with their live status, then each app's
// pending tasks (Task.Pending says why; no server, no status), filtered by
// app, server and task when these are not empty.
func taskInfos(sn *store.Snapshot, statuses map[string]store.StatusRecord, app, server, task string) []api.TaskInfo {
	live := map[string]api.TaskStatus{}
	for _, st := range statuses {
		for _, ts := range st.Status.Tasks {
			live[st.Status.Name+"\x00"+ts.Task] = ts
		}
	}
	out := []api.TaskInfo{}
	for _, p := range sn.Placement {
		if app != "" && p.App != app {
			continue
		}
		for _, t := range p.Tasks {
			if (server != "" && t.Server != server) || (task != "" && t.ID != task) {
				continue
			}
			ti := api.TaskInfo{Task: t}
			if ts, ok := live[t.Server+"\x00"+t.ID]; ok {
				ti.Status = &ts
			}
			out = append(out, ti)
		}
		if server != "" {
			continue // pending tasks have no server
		}
		for _, t := range p.Pending {
			if task == "" || t.ID == task {
				out = append(out, api.TaskInfo{Task: t})
			}
		}
	}
	return out
}

func (s *Server) listPaths(w http.ResponseWriter, r *http.Request) {
	sn, statuses, ok := s.loadViewState(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	if q.Get("pairs") == "1" {
		writeJSON(w, http.StatusOK, serverPairs(pathInfos(sn, statuses, q.Get("app"), q.Get("server"), time.Now(), true)))
		return
	}
	writeJSON(w, http.StatusOK, pathInfos(sn, statuses, q.Get("app"), q.Get("server"), time.Now(), false))
}

// serverPairs keeps the first path of each (app, source server,
// destination server), counting the paths each stands for (api.Filter.
// ServerPairs): ps holds the encrypted paths between servers only.
func serverPairs(ps []api.PathInfo) []api.PathInfo {
	type key struct{ app, from, to string }
	at := map[key]int{}
	out := []api.PathInfo{}
	for _, p := range ps {
		k := key{p.App, p.FromServer, p.ToServer}
		if i, ok := at[k]; ok {
			out[i].Count++
			continue
		}
		p.Count = 1
		at[k] = len(out)
		out = append(out, p)
	}
	return out
}

// pathInfos are the compiled paths with the live state of the WireGuard
// peer that carries each encrypted one, filtered by app and by server
// (either end) when these are not empty.
//
// With encryptedOnly, only the encrypted paths between two servers are
// listed; their peers are looked up once per server pair.
func pathInfos(sn *store.Snapshot, statuses map[string]store.StatusRecord, app, server string, now time.Time, encryptedOnly bool) []api.PathInfo {
	out := []api.PathInfo{}
	for _, p := range sn.Placement {
		for pa := range p.Paths.All() {
			if encryptedOnly && (!pa.Encrypt || pa.Local) {
				continue
			}
			// An app's paths are its own and those into it from apps
			// that import its services.
			if app != "" && pa.App != app && pa.ToApp != app {
				continue
			}
			if server != "" && pa.FromServer != server && pa.ToServer != server {
				continue
			}
			pi := api.PathInfo{Path: pa, HandshakeAge: -1}
			if pa.Encrypt && !pa.Local {
				// During a key rotation a peer is listed on both WireGuard
				// devices: the one its routes take tells.
				for _, peer := range statuses[pa.FromServer].Status.Peers {
					if peer.Server == pa.ToServer && (pi.Peer == nil || peer.Routed) {
						peer := peer
						pi.Peer = &peer
						if !peer.LastHandshake.IsZero() {
							pi.HandshakeAge = now.Sub(peer.LastHandshake).Round(time.Millisecond).Seconds()
						}
					}
				}
			}
			out = append(out, pi)
		}
	}
	return out
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %q is not a positive integer", v))
			return
		}
		limit = n
	}
	evs, err := s.st.Events(r.Context(), limit)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, evs)
}

// backup streams an etcd snapshot of the whole keyspace (all of Corridor's
// state, CA and tokens included: keep it as secret as admin.token).
func (s *Server) backup(w http.ResponseWriter, r *http.Request) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(10 * time.Minute))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="corridor-etcd.snapshot"`)
	n, err := s.st.Backup(r.Context(), w)
	if err != nil {
		s.log.Error("backup failed", "bytes", n, "err", err)
		if n == 0 {
			writeErr(w, err)
		}
		return
	}
	s.log.Info("backup sent", "bytes", n, "who", who(r))
}
