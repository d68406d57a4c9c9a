package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// The server relays two kinds of user requests to agents' local APIs:
// logs of a task, and verify's probes. Users hold only the admin token;
// agents accept only the server's relay certificate. The agent's address
// comes from its own last status report.

// maxProbeTimeout bounds one relayed probe.
const maxProbeTimeout = 30 * time.Second

// agentClient returns a client of the named server's agent API.
func (s *Server) agentClient(r *http.Request, name string) (*api.AgentClient, error) {
	statuses, err := s.st.Statuses(r.Context())
	if err != nil {
		return nil, err
	}
	rec, ok := statuses[name]
	if !ok {
		return nil, fail(http.StatusNotFound, fmt.Sprintf("server %s has never reported: is its agent running? (corridor get servers)", name))
	}
	if rec.Status.APIAddr == "" {
		return nil, fail(http.StatusConflict, fmt.Sprintf("the agent of %s serves no local API: start it with --listen", name))
	}
	s.relayOnce.Do(func() { s.relay, s.relayErr = s.ca.relayCert() })
	if s.relayErr != nil {
		return nil, s.relayErr
	}
	return api.NewAgentClient(rec.Status.APIAddr, api.AgentAPIClientTLS(s.ca.pool, s.relay, name)), nil
}

func writeRelayErr(w http.ResponseWriter, err error) {
	var he *httpError
	var se *api.StatusError
	switch {
	case errors.As(err, &he):
		writeError(w, he.code, he.msg, he.details...)
	case errors.As(err, &se):
		writeError(w, se.Code, "agent: "+se.Message, se.Details...)
	default:
		writeError(w, http.StatusBadGateway, "agent: "+err.Error())
	}
}

// probe is POST /v1/servers/{name}/probe.
func (s *Server) probe(w http.ResponseWriter, r *http.Request) {
	var req api.ProbeRequest
	if err := decodeJSON(w, r, 64<<10, &req); err != nil {
		return
	}
	if req.Timeout <= 0 || req.Timeout > maxProbeTimeout {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("timeout must be between 1ns and %s", maxProbeTimeout))
		return
	}
	c, err := s.agentClient(r, r.PathValue("name"))
	if err != nil {
		writeRelayErr(w, err)
		return
	}
	res, err := c.Probe(r.Context(), req)
	if err != nil {
		writeRelayErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// taskLogs is GET /v1/tasks/{task...}/logs: it finds the task's server in
// the placement and streams the log from its agent.
func (s *Server) taskLogs(w http.ResponseWriter, r *http.Request) {
	task := r.PathValue("task")
	lines := 100
	if v := r.URL.Query().Get("lines"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 100000 {
			writeError(w, http.StatusBadRequest, "lines must be a number between 0 and 100000")
			return
		}
		lines = n
	}
	follow := r.URL.Query().Get("follow") == "1"
	sn, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	server := ""
	for _, p := range sn.Placement {
		for _, t := range p.Tasks {
			if t.ID == task {
				server = t.Server
			}
		}
	}
	if server == "" {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no task %s: list them with `corridor get tasks`", task))
		return
	}
	c, err := s.agentClient(r, server)
	if err != nil {
		writeRelayErr(w, err)
		return
	}
	body, err := c.Logs(r.Context(), task, lines, follow)
	if err != nil {
		writeRelayErr(w, err)
		return
	}
	defer body.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	// Follow streams until the user goes away: flush every chunk.
	fl, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if rerr != nil {
			if rerr != io.EOF && r.Context().Err() == nil {
				s.log.Warn("relaying task log", "task", task, "err", rerr)
			}
			return
		}
	}
}

// taskSub routes /v1/tasks/{task...}: task IDs hold slashes, so the logs
// suffix is matched by hand.
func (s *Server) taskSub(w http.ResponseWriter, r *http.Request) {
	rest := r.PathValue("task")
	const suffix = "/logs"
	if len(rest) <= len(suffix) || rest[len(rest)-len(suffix):] != suffix {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s (see docs/api.md)", r.Method, r.URL.Path))
		return
	}
	r.SetPathValue("task", rest[:len(rest)-len(suffix)])
	s.taskLogs(w, r)
}
