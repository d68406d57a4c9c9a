package server

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/artifact"
	"github.com/corridor-dev/corridor/internal/spec"
)

// The artifact store: task programs uploaded with `corridor artifact
// push` (POST /v1/artifacts), kept content-addressed by SHA-256 in
// DataDir/artifacts/SHA256 and served to agents (GET /v1/artifacts/SHA256,
// by their client certificate) for classes whose guest.artifact names
// corridor://SHA256.
//
// Files, not etcd: programs are megabytes, etcd's requests are bounded
// at about 1.5 MiB and every byte put in etcd is kept in its raft log,
// its snapshots and every member's memory; a content-addressed file needs
// no consensus (its name is its content) and is served with sendfile.
// The price: with several control-plane servers, each serves only what
// was pushed to it (push to each, or use an https:// URL).

// DefaultArtifactMaxSize bounds one uploaded artifact unless
// Config.ArtifactMaxSize says otherwise.
const DefaultArtifactMaxSize = 512 << 20

// ArtifactsDir is the store's directory under the data directory.
const ArtifactsDir = "artifacts"

// artifactDeadline bounds the upload or download of one artifact.
const artifactDeadline = 30 * time.Minute

func (s *Server) artifactsDir() string { return filepath.Join(s.cfg.DataDir, ArtifactsDir) }

func (s *Server) artifactMax() int64 {
	if s.cfg.ArtifactMaxSize > 0 {
		return s.cfg.ArtifactMaxSize
	}
	return DefaultArtifactMaxSize
}

// pushArtifact stores the request body under the sha256 the query names,
// streaming it through a hash into a temporary file: nothing is stored
// unless the whole body arrived within the limit and matches.
func (s *Server) pushArtifact(w http.ResponseWriter, r *http.Request) {
	sum := r.URL.Query().Get("sha256")
	if !spec.ValidSHA256(sum) {
		writeError(w, http.StatusBadRequest, "query parameter sha256 must be the body's SHA-256, 64 lower-case hex digits")
		return
	}
	max := s.artifactMax()
	if r.ContentLength > max {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("artifact of %d bytes is larger than this server's limit of %d bytes (corridor server --artifact-max-size)", r.ContentLength, max))
		return
	}
	dir := s.artifactsDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		writeError(w, http.StatusInternalServerError, "artifact store: "+err.Error())
		return
	}
	p := filepath.Join(dir, sum)
	created := false
	if _, err := os.Stat(p); err != nil {
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(artifactDeadline))
		_ = rc.SetWriteDeadline(time.Now().Add(artifactDeadline))
		err := artifact.WriteVerified(dir, sum, r.Body, max, 0o400)
		switch {
		case errors.Is(err, artifact.ErrTooLarge):
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("artifact larger than this server's limit of %d bytes (corridor server --artifact-max-size)", max))
			return
		case errors.Is(err, artifact.ErrHashMismatch):
			writeError(w, http.StatusBadRequest, "the body does not match the sha256 given: "+err.Error())
			return
		case err != nil:
			writeError(w, http.StatusInternalServerError, "store artifact: "+err.Error())
			return
		}
		created = true
	}
	st, err := os.Stat(p)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "artifact store: "+err.Error())
		return
	}
	info := api.ArtifactInfo{SHA256: sum, Size: st.Size(), Stored: st.ModTime().UTC(), URL: spec.ArtifactScheme + "://" + sum}
	if created {
		if err := s.st.AppendEvent(r.Context(), api.Event{Who: who(r), Action: "artifact.push", Object: "artifact/" + sum,
			Message: strconv.FormatInt(info.Size, 10) + " bytes"}); err != nil {
			s.log.Warn("artifact event not recorded", "err", err)
		}
		s.log.Info("artifact stored", "sha256", sum, "bytes", info.Size, "by", who(r))
		writeJSON(w, http.StatusCreated, info)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// listArtifacts lists the store, newest first.
func (s *Server) listArtifacts(w http.ResponseWriter, r *http.Request) {
	ents, err := os.ReadDir(s.artifactsDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		writeError(w, http.StatusInternalServerError, "artifact store: "+err.Error())
		return
	}
	out := []api.ArtifactInfo{}
	for _, e := range ents {
		if !spec.ValidSHA256(e.Name()) {
			continue // a push under way
		}
		st, err := e.Info()
		if err != nil {
			continue
		}
		out = append(out, api.ArtifactInfo{SHA256: e.Name(), Size: st.Size(), Stored: st.ModTime().UTC(), URL: spec.ArtifactScheme + "://" + e.Name()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Stored.After(out[j].Stored) })
	writeJSON(w, http.StatusOK, out)
}

// getArtifact serves one artifact to an agent (its client certificate,
// as on the agent routes) or to an admin (the admin token).
func (s *Server) getArtifact(w http.ResponseWriter, r *http.Request) {
	serve := func(w http.ResponseWriter, r *http.Request) {
		sum := r.PathValue("sha256")
		if !spec.ValidSHA256(sum) {
			writeError(w, http.StatusBadRequest, "an artifact is named by its SHA-256, 64 lower-case hex digits")
			return
		}
		f, err := os.Open(filepath.Join(s.artifactsDir(), sum))
		if errors.Is(err, os.ErrNotExist) {
			writeError(w, http.StatusNotFound, "artifact "+sum+" is not in this server's store: push it with `corridor artifact push FILE` (with several control-plane servers, to each)")
			return
		}
		if err != nil {
			writeError(w, http.StatusInternalServerError, "artifact store: "+err.Error())
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			writeError(w, http.StatusInternalServerError, "artifact store: "+err.Error())
			return
		}
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(artifactDeadline))
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", st.ModTime(), f)
	}
	if r.Header.Get("Authorization") != "" {
		s.authenticate(authAdmin, serve)(w, r)
		return
	}
	// An agent: any registered server's certificate; authAgent checks
	// it as for the server's own routes.
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		r.SetPathValue("name", r.TLS.PeerCertificates[0].Subject.CommonName)
	}
	s.authenticate(authAgent, serve)(w, r)
}
