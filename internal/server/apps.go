package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
)

// maxAttempts bounds the read-validate-compile-commit loop of a change
// that keeps losing races; the client gets 409 after that.
const maxAttempts = 20

// httpError is an error with the answer it deserves.
type httpError struct {
	code    int
	msg     string
	details []string
}

func (e *httpError) Error() string { return e.msg }

func fail(code int, msg string, details ...string) *httpError {
	return &httpError{code: code, msg: msg, details: details}
}

func writeErr(w http.ResponseWriter, err error) {
	var he *httpError
	if errors.As(err, &he) {
		writeError(w, he.code, he.msg, he.details...)
		return
	}
	writeError(w, http.StatusServiceUnavailable, err.Error())
}

// errorLines turns a spec.ErrorList (or any error) into one line per
// problem, "file:line:col: field: message".
func errorLines(err error) []string {
	if l, ok := spec.AsErrorList(err); ok {
		out := make([]string, len(l))
		for i, e := range l {
			out[i] = e.Error()
		}
		return out
	}
	var lines []string
	for _, ln := range strings.Split(err.Error(), "\n") {
		if ln = strings.TrimSpace(ln); ln != "" {
			lines = append(lines, ln)
		}
	}
	return lines
}

var fileNameRE = regexp.MustCompile(`^[^\x00-\x1f]{1,200}$`)

// incoming is an app from a request body with the source to keep.
type incoming struct {
	app    spec.App
	source string
	// loc places errors found against the stored apps (imports) in the
	// file; nil for JSON.
	loc *spec.Locator
}

// parseApps reads the body of an apply or plan: YAML (any content type but
// JSON) through the same decoder as `corridor plan`, or JSON spec.App (one
// object or an array).
func (s *Server) parseApps(w http.ResponseWriter, r *http.Request) ([]incoming, error) {
	body, err := readBody(w, r, s.cfg.MaxBody)
	if err != nil {
		return nil, err
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/json" {
		var apps []spec.App
		trimmed := bytes.TrimSpace(body)
		if len(trimmed) > 0 && trimmed[0] == '[' {
			err = strictUnmarshal(body, &apps)
		} else {
			var a spec.App
			err = strictUnmarshal(body, &a)
			apps = []spec.App{a}
		}
		if err != nil {
			return nil, fail(http.StatusBadRequest, "malformed JSON body: "+err.Error())
		}
		var errs spec.ErrorList
		for i := range apps {
			spec.SetAppDefaults(&apps[i])
			for _, e := range spec.ValidateApp(&apps[i]) {
				if len(apps) > 1 {
					e.Field = fmt.Sprintf("[%d].%s", i, e.Field)
				}
				errs = append(errs, e)
			}
		}
		errs = append(errs, spec.ValidateApps(apps)...)
		if len(errs) > 0 {
			return nil, fail(http.StatusUnprocessableEntity, "invalid app", errorLines(errs)...)
		}
		out := make([]incoming, len(apps))
		for i, a := range apps {
			out[i] = incoming{app: a}
		}
		return out, nil
	}
	file := r.Header.Get("X-Corridor-File")
	if !fileNameRE.MatchString(file) {
		file = "request"
	}
	apps, locs, err := spec.DecodeAppsLocated(file, body)
	if err != nil {
		return nil, fail(http.StatusUnprocessableEntity, "invalid app", errorLines(err)...)
	}
	sources := splitDocuments(body, len(apps))
	out := make([]incoming, len(apps))
	for i, a := range apps {
		out[i] = incoming{app: a, source: sources[i], loc: locs[i]}
	}
	return out, nil
}

// splitDocuments gives each app the YAML document it came from, for
// display. If the documents cannot be matched one to one, every app keeps
// the whole body.
func splitDocuments(body []byte, n int) []string {
	out := make([]string, n)
	dec := yaml.NewDecoder(bytes.NewReader(body))
	var docs []string
	for {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			docs = nil
			break
		}
		if node.Kind == 0 || (len(node.Content) == 1 && node.Content[0].ShortTag() == "!!null") {
			continue
		}
		b, err := yaml.Marshal(&node)
		if err != nil {
			docs = nil
			break
		}
		docs = append(docs, string(b))
	}
	for i := range out {
		if len(docs) == n {
			out[i] = docs[i]
		} else {
			out[i] = string(body)
		}
	}
	return out
}

// ifMatch reads the If-Match header: the revision the client last saw
// ("0": the app must not exist yet). Quotes (an ETag) are accepted.
func ifMatch(r *http.Request) (int64, bool, error) {
	v := strings.Trim(strings.TrimSpace(r.Header.Get("If-Match")), `"`)
	if v == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, false, fail(http.StatusBadRequest, fmt.Sprintf("If-Match: %q is not an app revision (a non-negative integer)", v))
	}
	return n, true, nil
}

func checkIfMatch(sn *store.Snapshot, name string, want int64) error {
	cur, ok := sn.App(name)
	var have int64
	if ok {
		have = cur.Revision
	}
	if have == want {
		return nil
	}
	if want == 0 {
		return fail(http.StatusConflict, fmt.Sprintf("app %s already exists at revision %d (If-Match: 0 asks to create it)", name, have))
	}
	if !ok {
		return fail(http.StatusConflict, fmt.Sprintf("app %s does not exist any more (If-Match: %d)", name, want))
	}
	return fail(http.StatusConflict, fmt.Sprintf("app %s is at revision %d, not %d: someone changed it; get it again, merge and re-apply", name, have, want))
}

// dryRun compiles apps as they would be with the snapshot's servers and
// placement; a compile error means the change must not be stored. Tasks
// no server can take are pending in the plan; unless allowPending, an
// apply that makes tasks pending that are not pending now is refused
// (pendingRefusal; docs/operations.md, "When there is too little room").
func (s *Server) dryRun(sn *store.Snapshot, apps []spec.App, allowPending bool) (*compile.Plan, error) {
	servers, _ := fleet(sn, s.hub.lastSeen(), time.Now(), s.started, s.cfg.HeartbeatTimeout)
	plan, err := compile.Compile(compileInput(sn, apps, servers))
	if err != nil {
		return nil, fail(http.StatusUnprocessableEntity, "the apps do not compile with the current servers; nothing was stored", errorLines(err)...)
	}
	if !allowPending {
		if err := pendingRefusal(sn, plan); err != nil {
			return nil, err
		}
	}
	return plan, nil
}

// merged is the snapshot's apps with in replacing or adding.
func merged(sn *store.Snapshot, in []incoming) []spec.App {
	byName := map[string]spec.App{}
	for _, a := range sn.Apps {
		byName[a.App.Name] = a.App
	}
	for _, a := range in {
		byName[a.app.Name] = a.app
	}
	out := make([]spec.App, 0, len(byName))
	for _, a := range byName {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func sameSpec(a, b spec.App) bool {
	ab, _ := json.Marshal(a)
	bb, _ := json.Marshal(b)
	return bytes.Equal(ab, bb)
}

// applyApps stores apps. Design (docs/api.md, "Conflicts"): each attempt
// reads a snapshot, validates and dry-run compiles against it, and commits
// only if no app or server changed since the snapshot; otherwise it tries
// again on the new state. With If-Match, a changed app is a 409 instead.
// So two racing applies both land, one after the other, each checked
// against what it lands on, each recorded as an event naming the revision
// it replaced, and the answer says it too.
func (s *Server) applyApps(w http.ResponseWriter, r *http.Request) {
	in, err := s.parseApps(w, r)
	if err != nil {
		if !errors.Is(err, errBodyWritten) {
			writeErr(w, err)
		}
		return
	}
	want, hasIfMatch, err := ifMatch(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	if hasIfMatch && len(in) != 1 {
		writeError(w, http.StatusBadRequest, "If-Match applies to a body of exactly one app")
		return
	}
	res, err := s.commitApply(r.Context(), who(r), in, want, hasIfMatch, allowPendingHeader(r))
	if err != nil {
		writeErr(w, err)
		return
	}
	code := http.StatusOK
	for _, a := range res.Apps {
		if a.Action == "created" {
			code = http.StatusCreated
		}
	}
	writeJSON(w, code, res)
}

func (s *Server) commitApply(ctx context.Context, by string, in []incoming, want int64, hasIfMatch, allowPending bool) (*api.ApplyResult, error) {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		sn, err := s.st.Snapshot(ctx)
		if err != nil {
			return nil, err
		}
		if hasIfMatch {
			if err := checkIfMatch(sn, in[0].app.Name, want); err != nil {
				return nil, err
			}
		}
		all := merged(sn, in)
		if errs := spec.ValidateApps(all); len(errs) > 0 {
			return nil, fail(http.StatusUnprocessableEntity, "the apps conflict with stored apps", errorLines(errs)...)
		}
		if err := checkImports(in, all); err != nil {
			return nil, err
		}
		plan, err := s.dryRun(sn, all, allowPending)
		if err != nil {
			return nil, err
		}
		res := &api.ApplyResult{Pending: pendingOf(plan, in)}
		var puts []store.AppRecord
		var msgs []string
		now := time.Now().UTC()
		for _, a := range in {
			ch := api.AppChange{Name: a.app.Name, Action: "created"}
			if old, ok := sn.App(a.app.Name); ok {
				ch.PreviousRevision = old.Revision
				ch.Action = "updated"
				if sameSpec(old.App, a.app) && (a.source == "" || a.source == old.Source) {
					ch.Action = "unchanged"
					ch.Revision = old.Revision
				}
			}
			res.Apps = append(res.Apps, ch)
			if ch.Action == "unchanged" {
				continue
			}
			puts = append(puts, store.AppRecord{App: a.app, Source: a.source, UpdatedBy: by, UpdatedAt: now})
			m := fmt.Sprintf("%s %s", ch.Action, a.app.Name)
			if ch.PreviousRevision != 0 {
				m += fmt.Sprintf(" (replacing revision %d)", ch.PreviousRevision)
			}
			msgs = append(msgs, m)
		}
		if len(puts) == 0 {
			return res, nil
		}
		msgs = append(msgs, unresolvedNotes(sn, all, in)...)
		obj := ""
		if len(in) == 1 {
			obj = "app/" + in[0].app.Name
		}
		rev, err := s.st.CommitApps(ctx, sn, puts, nil, api.Event{Who: by, Action: "app.apply", Object: obj, Message: strings.Join(msgs, "; ")})
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for i := range res.Apps {
			if res.Apps[i].Action != "unchanged" {
				res.Apps[i].Revision = rev
			}
		}
		return res, nil
	}
	return nil, fail(http.StatusConflict, "the state kept changing while applying; try again")
}

// plan is a dry run of an apply: what would change, and nothing stored.
func (s *Server) plan(w http.ResponseWriter, r *http.Request) {
	in, err := s.parseApps(w, r)
	if err != nil {
		if !errors.Is(err, errBodyWritten) {
			writeErr(w, err)
		}
		return
	}
	sn, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	all := merged(sn, in)
	if errs := spec.ValidateApps(all); len(errs) > 0 {
		writeError(w, http.StatusUnprocessableEntity, "the apps conflict with stored apps", errorLines(errs)...)
		return
	}
	if err := checkImports(in, all); err != nil {
		writeErr(w, err)
		return
	}
	p, err := s.dryRun(sn, all, allowPendingHeader(r))
	if err != nil {
		writeErr(w, err)
		return
	}
	res := api.PlanResult{Tasks: p.Tasks.Flat()}
	inApps := map[string]bool{}
	for _, a := range in {
		inApps[a.app.Name] = true
		ch := api.AppChange{Name: a.app.Name, Action: "created"}
		if old, ok := sn.App(a.app.Name); ok {
			ch.PreviousRevision, ch.Revision = old.Revision, old.Revision
			ch.Action = "updated"
			if sameSpec(old.App, a.app) {
				ch.Action = "unchanged"
			}
		}
		res.Apps = append(res.Apps, ch)
	}
	res.Changes = taskChanges(sn, p, inApps)
	res.Changes = append(res.Changes, pendingChanges(sn, p)...)
	res.Paths = pathChanges(sn, p)
	for _, pc := range res.Paths {
		res.Changes = append(res.Changes, api.PlanChange{Kind: "path", Name: pc.App + ": " + pc.FromClass + " -> " + pc.ToClass,
			Action: "update", Detail: fmt.Sprintf("%d added, %d removed", len(pc.Added), len(pc.Removed))})
	}
	hosts, err := s.st.Hosts(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	stored := make(map[string][]byte, len(hosts))
	for name, h := range hosts {
		if h != nil {
			stored[name] = h.Desired
		}
	}
	for _, hc := range hostChanges(p, stored) {
		res.Changes = append(res.Changes, hc)
		res.Hosts = append(res.Hosts, hc.Name)
	}
	writeJSON(w, http.StatusOK, res)
}

// loadApp loads the stored state and the app name in it; with checkRev,
// the app must be at revision want (If-Match). When it fails it has
// answered the request (404 for a missing app), and ok is false.
func (s *Server) loadApp(w http.ResponseWriter, r *http.Request, name string, want int64, checkRev bool) (*store.Snapshot, store.AppRecord, bool) {
	sn, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, err)
		return nil, store.AppRecord{}, false
	}
	a, ok := sn.App(name)
	if !ok {
		writeError(w, http.StatusNotFound, "no app named "+name+" (see `corridor get apps`)")
		return nil, store.AppRecord{}, false
	}
	if checkRev {
		if err := checkIfMatch(sn, name, want); err != nil {
			writeErr(w, err)
			return nil, store.AppRecord{}, false
		}
	}
	return sn, a, true
}

// updateApp runs try on the stored state and the app name in it (at the
// If-Match revision, when the request gives one) until try commits
// without a store conflict. try answers the request and returns nil,
// returns store.ErrConflict to run again on a fresher state, or returns
// an error for updateApp to answer with. doing names the change in the
// answer given when the state keeps changing.
func (s *Server) updateApp(w http.ResponseWriter, r *http.Request, name, doing string, try func(sn *store.Snapshot, old store.AppRecord) error) {
	want, hasIfMatch, err := ifMatch(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		sn, old, ok := s.loadApp(w, r, name, want, hasIfMatch)
		if !ok {
			return
		}
		err := try(sn, old)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			writeErr(w, err)
		}
		return
	}
	writeError(w, http.StatusConflict, "the state kept changing while "+doing+"; try again")
}

func (s *Server) deleteApp(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.updateApp(w, r, name, "deleting", func(sn *store.Snapshot, old store.AppRecord) error {
		var rest []spec.App
		for _, a := range sn.Apps {
			if a.App.Name != name {
				rest = append(rest, a.App)
			}
		}
		msg := strings.Join(append([]string{fmt.Sprintf("deleted %s (revision %d)", name, old.Revision)},
			unresolvedNotes(sn, rest, []incoming{{app: spec.App{Name: name}}})...), "; ")
		_, err := s.st.CommitApps(r.Context(), sn, nil, []string{name}, api.Event{Who: who(r), Action: "app.delete",
			Object: "app/" + name, Message: msg})
		if err != nil {
			return err
		}
		if err := s.st.DeleteVerifyRuns(r.Context(), name); err != nil {
			s.log.Warn("delete verify runs", "app", name, "err", err)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

func (s *Server) scaleApp(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req api.ScaleRequest
	if err := decodeJSON(w, r, s.cfg.MaxBody, &req); err != nil {
		return
	}
	s.updateApp(w, r, name, "scaling", func(sn *store.Snapshot, old store.AppRecord) error {
		app := old.App
		app.Classes = append([]spec.Class(nil), app.Classes...)
		idx := -1
		var names []string
		for i, c := range app.Classes {
			names = append(names, c.Name)
			if c.Name == req.Class {
				idx = i
			}
		}
		if idx < 0 {
			writeError(w, http.StatusUnprocessableEntity, "invalid scale request",
				fmt.Sprintf("class: app %s has no class %q (it has: %s)", name, req.Class, strings.Join(names, ", ")))
			return nil
		}
		from := app.Classes[idx].Tasks
		app.Classes[idx].Tasks = req.Tasks
		if errs := spec.ValidateApp(&app); len(errs) > 0 {
			writeError(w, http.StatusUnprocessableEntity, "invalid scale request", errorLines(errs)...)
			return nil
		}
		if _, err := s.dryRun(sn, merged(sn, []incoming{{app: app}}), allowPendingHeader(r)); err != nil {
			return err
		}
		now := time.Now().UTC()
		note := fmt.Sprintf("%s: class %s scaled from %d to %d tasks by %s", now.Format(time.RFC3339), req.Class, from, req.Tasks, who(r))
		rec := store.AppRecord{App: app, Source: old.Source, Notes: append(append([]string(nil), old.Notes...), note), UpdatedBy: who(r), UpdatedAt: now}
		rev, err := s.st.CommitApps(r.Context(), sn, []store.AppRecord{rec}, nil, api.Event{Who: who(r), Action: "app.scale",
			Object: "app/" + name, Message: fmt.Sprintf("class %s from %d to %d tasks (replacing revision %d)", req.Class, from, req.Tasks, old.Revision)})
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, api.ApplyResult{Apps: []api.AppChange{{Name: name, Action: "updated", Revision: rev, PreviousRevision: old.Revision}}})
		return nil
	})
}

func appView(a store.AppRecord, sn *store.Snapshot) api.App {
	placement := sn.Placement
	v := api.App{Name: a.App.Name, Spec: a.App, Revision: a.Revision, Source: a.Source, Notes: a.Notes, UpdatedBy: a.UpdatedBy, UpdatedAt: a.UpdatedAt}
	if len(a.App.Imports) > 0 {
		for _, e := range spec.CheckImports(&a.App, specs(sn.Apps)) {
			v.Unresolved = append(v.Unresolved, e.Error())
		}
	}
	for _, p := range placement {
		if p.App == a.App.Name {
			v.Placed = len(p.Tasks)
			if p.Network.IsValid() {
				v.Network = p.Network.String()
			}
		}
	}
	if v.Network == "" {
		v.Network = a.App.Network
	}
	return v
}

func (s *Server) listApps(w http.ResponseWriter, r *http.Request) {
	sn, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	out := make([]api.App, 0, len(sn.Apps))
	for _, a := range sn.Apps {
		out = append(out, appView(a, sn))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getApp(w http.ResponseWriter, r *http.Request) {
	sn, a, ok := s.loadApp(w, r, r.PathValue("name"), 0, false)
	if !ok {
		return
	}
	w.Header().Set("ETag", strconv.Quote(strconv.FormatInt(a.Revision, 10)))
	writeJSON(w, http.StatusOK, appView(a, sn))
}

// checkImports refuses an incoming app whose imports do not resolve
// against all (the stored apps with the incoming ones): a missing app or
// export, a port or protocol the service does not export. The importer is
// checked when it is applied; an exporter may withdraw its export or be
// deleted later (its consent is its own), which leaves the importer's
// rules unresolved, without paths (see unresolvedNotes).
func checkImports(in []incoming, all []spec.App) error {
	var lines []string
	for _, a := range in {
		errs := spec.CheckImports(&a.app, all)
		if len(errs) == 0 {
			continue
		}
		if a.loc != nil {
			a.loc.Locate(errs)
		} else if len(in) > 1 {
			for _, e := range errs {
				e.Field = "app " + a.app.Name + ": " + e.Field
			}
		}
		lines = append(lines, errorLines(errs)...)
	}
	if len(lines) > 0 {
		return fail(http.StatusUnprocessableEntity, "imports do not resolve against the stored apps; nothing was stored", lines...)
	}
	return nil
}

// unresolvedNotes names, for the event of a change (after: the apps as
// they will be), the stored apps other than the changed ones whose
// imports of a changed app resolved before and do not after: their rules
// to it lose their paths.
func unresolvedNotes(sn *store.Snapshot, after []spec.App, changed []incoming) []string {
	names := map[string]bool{}
	for _, c := range changed {
		names[c.app.Name] = true
	}
	before := specs(sn.Apps)
	var out []string
	for _, rec := range sn.Apps {
		a := rec.App
		if names[a.Name] {
			continue
		}
		touches := false
		for _, im := range a.Imports {
			app, _, _ := strings.Cut(im.Service, "/")
			touches = touches || names[app]
		}
		if !touches {
			continue
		}
		was := map[string]bool{}
		for _, e := range spec.CheckImports(&a, before) {
			was[e.Error()] = true
		}
		for _, e := range spec.CheckImports(&a, after) {
			if !was[e.Error()] {
				out = append(out, fmt.Sprintf("app %s now unresolved (no paths): %s", a.Name, e.Error()))
			}
		}
	}
	return out
}
