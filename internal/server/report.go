package server

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/report"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
	"github.com/corridor-dev/corridor/internal/verify"
	"github.com/corridor-dev/corridor/internal/version"
)

// Verify runs and evidence reports (docs/api.md, "Verify runs and
// reports").

// postVerifyRun stores one `corridor verify` result of an app: the body is
// the verify report as `corridor verify -o json` prints it. The server
// keeps the newest api.MaxVerifyRuns per app and records a verify.run
// event.
func (s *Server) postVerifyRun(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	body, err := readBody(w, r, s.cfg.MaxBody)
	if err != nil {
		return
	}
	var rep verify.Report
	if err := strictUnmarshal(body, &rep); err != nil {
		writeError(w, http.StatusBadRequest, "malformed verify report (the output of corridor verify -o json): "+err.Error())
		return
	}
	if rep.App != name {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("the report is of app %q, posted for %q", rep.App, name))
		return
	}
	sn, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	if _, ok := sn.App(name); !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no app %q", name))
		return
	}
	run := api.VerifyRun{App: name, By: who(r), Checks: len(rep.Checks), Report: body}
	// The counts are the checks', whatever the body's summary says.
	for _, c := range rep.Checks {
		switch {
		case c.Observed == verify.Incomplete:
			run.Incomplete++
		case c.OK:
			run.Passed++
		default:
			run.Failed++
		}
	}
	run.OK = run.Failed == 0 && run.Incomplete == 0 && run.Passed > 0
	if run, err = s.st.PutVerifyRun(r.Context(), run); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	verdict := "every check matches the policy"
	if !run.OK {
		verdict = "not proven"
	}
	ev := api.Event{Who: run.By, Action: "verify.run", Object: "app/" + name,
		Message: fmt.Sprintf("verify run %s: %s (%d match, %d mismatch, %d incomplete)", run.ID, verdict, run.Passed, run.Failed, run.Incomplete)}
	if err := s.st.AppendEvent(r.Context(), ev); err != nil {
		s.log.Warn("record event", "err", err)
	}
	run.Report = nil
	writeJSON(w, http.StatusCreated, run)
}

// listVerifyRuns: GET /v1/apps/{name}/verify-runs[?limit=N] → the app's
// stored runs, newest first, with their reports.
func (s *Server) listVerifyRuns(w http.ResponseWriter, r *http.Request) {
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %q is not a positive integer", v))
			return
		}
		limit = n
	}
	runs, err := s.st.VerifyRuns(r.Context(), r.PathValue("name"), limit, true)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, runs)
}

// listLastVerifyRuns: GET /v1/verify-runs[?report=1] → the newest run of every
// app (for the console), without the reports unless asked.
func (s *Server) listLastVerifyRuns(w http.ResponseWriter, r *http.Request) {
	runs, err := s.st.LastVerifyRuns(r.Context(), r.URL.Query().Get("report") == "1")
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, runs)
}

// DefaultReportPeriod is how far back a report's events go by default.
const DefaultReportPeriod = 7 * 24 * time.Hour

// appReport: GET /v1/apps/{name}/report[?since=RFC3339|DURATION] → the
// app's evidence report, signed by the CA (api.SignedReport).
func (s *Server) appReport(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	now := time.Now().UTC().Truncate(time.Second)
	since := now.Add(-DefaultReportPeriod)
	if v := r.URL.Query().Get("since"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			since = now.Add(-d)
		} else if t, err := time.Parse(time.RFC3339, v); err == nil {
			since = t.UTC()
		} else {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("since: %q is neither an RFC 3339 time nor a positive duration (168h)", v))
			return
		}
	}
	sn, statuses, ok := s.loadViewState(w, r)
	if !ok {
		return
	}
	rec, found := sn.App(name)
	if !found {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no app %q", name))
		return
	}
	events, err := s.st.Events(r.Context(), 0)
	if err != nil {
		writeErr(w, err)
		return
	}
	runs, err := s.st.VerifyRuns(r.Context(), name, 1, true)
	if err != nil {
		writeErr(w, err)
		return
	}
	rep, err := s.buildReport(sn, rec, statuses, events, runs, since, now)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	signed, err := report.Sign(s.ca.key, s.ca.cert.Raw, rep)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, signed)
}

// buildReport gathers the report of one app from what the control plane
// holds: a pure function of its arguments.
func (s *Server) buildReport(sn *store.Snapshot, rec store.AppRecord, statuses map[string]store.StatusRecord,
	events []api.Event, runs []api.VerifyRun, since, now time.Time) (*report.Report, error) {
	app := rec.App
	specJSON, err := json.Marshal(app)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(specJSON)
	rep := &report.Report{
		Format:      report.Format,
		App:         app.Name,
		GeneratedAt: now,
		Period:      report.Period{Since: since, Until: now},
		Control: report.ControlPlane{ID: s.cfg.ID, Version: version.Version,
			CA: report.Digest(s.ca.cert.Raw), Revision: sn.Revision},
		Policy: report.Policy{Revision: rec.Revision, Hash: "sha256:" + hex.EncodeToString(sum[:]),
			UpdatedBy: rec.UpdatedBy, UpdatedAt: rec.UpdatedAt.UTC(), Spec: app, Source: rec.Source, Notes: rec.Notes},
		Tasks: []report.Task{}, Matrix: []report.Cell{}, Paths: []report.Path{}, Keys: []report.Key{}, Events: []report.Event{},
		Versions: report.Versions{Server: version.Version, Agents: []report.AgentVersion{}},
	}
	taskState := map[string]string{}
	for _, st := range statuses {
		for _, t := range st.Status.Tasks {
			taskState[t.Task] = t.State
		}
	}
	servers := map[string]bool{}
	for _, pl := range sn.Placement {
		if pl.App != app.Name {
			continue
		}
		if pl.Network.IsValid() {
			rep.Policy.Network = pl.Network.String()
		}
		for _, t := range pl.Tasks {
			rt := report.Task{ID: t.ID, Class: t.Class, Server: t.Server, Address: t.Address.String(),
				State: taskState[t.ID], Kept: t.Reason.Kept, Reason: t.Reason.Chosen}
			for _, rj := range t.Reason.Rejected {
				rt.Rejected = append(rt.Rejected, rj.Server+": "+rj.Why)
			}
			if t.Reason.Omitted > 0 {
				rt.Rejected = append(rt.Rejected, fmt.Sprintf("(%d more servers not listed)", t.Reason.Omitted))
			}
			rep.Tasks = append(rep.Tasks, rt)
			servers[t.Server] = true
		}
		for pa := range pl.Paths.All() {
			ref := pathRef(pa)
			p := report.Path{From: pa.From, To: pa.To, FromClass: pa.FromClass, ToClass: pa.ToClass,
				FromServer: pa.FromServer, ToServer: pa.ToServer, Kind: ref.Kind, Ports: ref.Ports, HandshakeAge: -1}
			if pa.Encrypt && !pa.Local {
				// During a key rotation the peer is listed on both WireGuard
				// devices: the one its routes take tells.
				found := false
				for _, peer := range statuses[pa.FromServer].Status.Peers {
					if peer.Server == pa.ToServer && (!found || peer.Routed) {
						found = true
						p.RxBytes, p.TxBytes = peer.RxBytes, peer.TxBytes
						if !peer.LastHandshake.IsZero() {
							p.HandshakeAge = now.Sub(peer.LastHandshake).Round(time.Second).Seconds()
						}
					}
				}
			}
			rep.Paths = append(rep.Paths, p)
		}
	}
	for _, from := range app.Classes {
		for _, to := range app.Classes {
			rep.Matrix = append(rep.Matrix, matrixCell(&app, from.Name, to.Name))
		}
	}
	if len(runs) > 0 {
		run := runs[0]
		var vr verify.Report
		if err := json.Unmarshal(run.Report, &vr); err != nil {
			return nil, fmt.Errorf("stored verify run %s does not decode: %w", run.ID, err)
		}
		rep.Verify = &report.VerifyRun{ID: run.ID, Time: run.Time.UTC(), By: run.By, Started: vr.Started, Finished: vr.Finished,
			OK: run.OK, Passed: run.Passed, Failed: run.Failed, Incomplete: run.Incomplete, Checks: vr.Checks}
		if rep.Verify.Checks == nil {
			rep.Verify.Checks = []verify.Check{}
		}
	}
	names := make([]string, 0, len(servers))
	for n := range servers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		k := report.Key{Server: n, Rotations: nil}
		for _, sr := range sn.Servers {
			if sr.Server.Name == n {
				k.PublicKey, k.Generation = sr.Server.PublicKey, sr.Server.KeyGeneration
				k.Since = sr.KeySince().UTC()
			}
		}
		st, seen := statuses[n]
		if seen {
			k.Reported = st.Status.KeyGeneration
		}
		if !k.Since.IsZero() {
			k.AgeSeconds = now.Sub(k.Since).Round(time.Second).Seconds()
		}
		for _, ev := range events {
			if ev.Object == "server/"+n && ev.Action == "server.rotate-key" && !ev.Time.Before(since) {
				k.Rotations = append(k.Rotations, ev.Time.UTC())
			}
		}
		rep.Keys = append(rep.Keys, k)
		av := report.AgentVersion{Server: n}
		if seen {
			av.Version, av.LastSeen = st.Status.Version, st.Received.UTC()
		}
		rep.Versions.Agents = append(rep.Versions.Agents, av)
	}
	for _, ev := range events {
		if ev.Time.Before(since) || ev.Time.After(now.Add(time.Second)) {
			continue
		}
		about := ev.Object == "app/"+app.Name
		if strings.HasPrefix(ev.Object, "server/") && servers[strings.TrimPrefix(ev.Object, "server/")] {
			about = true
		}
		if ev.Object == "" && ev.Action == "placement.update" && strings.Contains(ev.Message, app.Name) {
			about = true
		}
		if about {
			ev.Time = ev.Time.UTC()
			rep.Events = append(rep.Events, ev)
		}
	}
	return rep, nil
}

// matrixCell is what the policy says of one class pair.
func matrixCell(a *spec.App, from, to string) report.Cell {
	c := report.Cell{FromClass: from, ToClass: to, Verdict: "denied"}
	var ports []string
	for _, r := range a.Rules {
		if r.From != from || r.To != to {
			continue
		}
		c.Verdict = "plain"
		if r.Encrypt {
			c.Verdict = "encrypted"
		}
		ps := make([]string, len(r.Ports))
		for i, p := range r.Ports {
			ps[i] = strconv.Itoa(p)
		}
		ports = append(ports, spec.Protocol(r.Protocol)+"/"+strings.Join(ps, ","))
	}
	c.Ports = strings.Join(ports, " ")
	return c
}
