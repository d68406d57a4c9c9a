package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

var bg = context.Background()

func TestAppCRUD(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	for i, n := range []string{"s1", "s2", "s3"} {
		ts.join(t, n, i, map[string]string{"zone": string(rune('a' + i))})
	}
	res, err := ts.admin.ApplyApp(bg, []byte(shopYAML), api.ApplyOptions{File: "shop.yaml"})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if len(res.Apps) != 1 || res.Apps[0].Action != "created" || res.Apps[0].Revision == 0 {
		t.Fatalf("apply result = %+v, want shop created", res)
	}
	rev := res.Apps[0].Revision

	apps, err := ts.admin.ListApps(bg)
	if err != nil || len(apps) != 1 || apps[0].Name != "shop" || apps[0].Revision != rev {
		t.Fatalf("list apps = %+v, %v", apps, err)
	}
	got, err := ts.admin.GetApp(bg, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got.Source, "name: shop") || got.UpdatedBy != "admin" || len(got.Spec.Classes) != 3 {
		t.Fatalf("get app = %+v", got)
	}

	again, err := ts.admin.ApplyApp(bg, []byte(shopYAML), api.ApplyOptions{File: "shop.yaml"})
	if err != nil || again.Apps[0].Action != "unchanged" || again.Apps[0].Revision != rev {
		t.Fatalf("re-apply = %+v, %v; want unchanged at %d", again, err, rev)
	}

	eventually(t, 10*time.Second, "5 tasks placed", func() (bool, string) {
		n := len(tasksOf(t, ts.admin, api.Filter{App: "shop"}))
		return n == 5, fmt.Sprint(n)
	})
	for _, task := range tasksOf(t, ts.admin, api.Filter{App: "shop"}) {
		if task.Server == "" || task.Reason.Chosen == "" {
			t.Errorf("task %s has no server or reason: %+v", task.ID, task)
		}
	}
	paths, err := ts.admin.ListPaths(bg, api.Filter{App: "shop"})
	if err != nil || len(paths) == 0 {
		t.Fatalf("paths = %v, %v", paths, err)
	}
	// By server pair: one entry per encrypted (app, source server,
	// destination server), counting every encrypted path between them.
	pairs, err := ts.admin.ListPaths(bg, api.Filter{App: "shop", ServerPairs: true})
	if err != nil {
		t.Fatal(err)
	}
	wantPairs := map[string]int{}
	for _, p := range paths {
		if p.Encrypt && !p.Local {
			wantPairs[p.App+" "+p.FromServer+" "+p.ToServer]++
		}
	}
	gotPairs := map[string]int{}
	for _, p := range pairs {
		k := p.App + " " + p.FromServer + " " + p.ToServer
		if _, dup := gotPairs[k]; dup || !p.Encrypt || p.Local {
			t.Errorf("server-pair list: %s listed twice, or not an encrypted path between servers: %+v", k, p)
		}
		gotPairs[k] = p.Count
	}
	if len(wantPairs) == 0 || !maps.Equal(gotPairs, wantPairs) {
		t.Errorf("server pairs %v, want %v", gotPairs, wantPairs)
	}

	if _, err := ts.admin.Scale(bg, "shop", "web", 3); err != nil {
		t.Fatalf("scale: %v", err)
	}
	eventually(t, 10*time.Second, "6 tasks after scale", func() (bool, string) {
		n := len(tasksOf(t, ts.admin, api.Filter{App: "shop"}))
		return n == 6, fmt.Sprint(n)
	})
	got, _ = ts.admin.GetApp(bg, "shop")
	if len(got.Notes) != 1 || !strings.Contains(got.Notes[0], "from 2 to 3") {
		t.Errorf("notes after scale = %q", got.Notes)
	}
	_, err = ts.admin.Scale(bg, "shop", "nope", 3)
	if api.HTTPStatus(err) != http.StatusUnprocessableEntity || !strings.Contains(err.Error(), "web, app, db") {
		t.Errorf("scale of unknown class: %v", err)
	}

	if err := ts.admin.DeleteApp(bg, "shop"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := ts.admin.GetApp(bg, "shop"); api.HTTPStatus(err) != http.StatusNotFound {
		t.Fatalf("get deleted app: %v, want 404", err)
	}
	if err := ts.admin.DeleteApp(bg, "shop"); api.HTTPStatus(err) != http.StatusNotFound {
		t.Fatalf("delete again: %v, want 404", err)
	}
	eventually(t, 10*time.Second, "no tasks after delete", func() (bool, string) {
		n := len(tasksOf(t, ts.admin, api.Filter{}))
		return n == 0, fmt.Sprint(n)
	})

	evs, err := ts.admin.ListEvents(bg, 0)
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string]int{}
	for _, e := range evs {
		actions[e.Action]++
		if e.Who == "" || e.Time.IsZero() {
			t.Errorf("event without who or when: %+v", e)
		}
	}
	for _, a := range []string{"server.join", "app.apply", "app.scale", "app.delete", "placement.update"} {
		if actions[a] == 0 {
			t.Errorf("no %s event in %v", a, actions)
		}
	}
	if actions["server.join"] != 3 || actions["app.apply"] != 1 {
		t.Errorf("events = %v, want 3 joins and 1 apply (the unchanged re-apply records none)", actions)
	}
}

func TestValidationErrorsCarryLines(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	bad := strings.Replace(shopYAML, "    tasks: 1\n", "    taks: 1\n", 1)
	line := 1 + strings.Count(bad[:strings.Index(bad, "taks:")], "\n")
	_, err := ts.admin.ApplyApp(bg, []byte(bad), api.ApplyOptions{File: "bad.yaml"})
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnprocessableEntity {
		t.Fatalf("apply bad = %v, want 422", err)
	}
	want := fmt.Sprintf("bad.yaml:%d", line)
	found := false
	for _, d := range se.Details {
		if strings.HasPrefix(d, want) && strings.Contains(d, "taks") {
			found = true
		}
	}
	if !found {
		t.Fatalf("details %q have no line starting %q naming taks", se.Details, want)
	}

	// JSON apps are validated by the same code, fields named by path.
	var app spec.App
	good, err := spec.DecodeApps("x", []byte(shopYAML))
	if err != nil {
		t.Fatal(err)
	}
	app = good[0]
	app.Classes[0].Tasks = -1
	body, _ := json.Marshal(app)
	code, out := rawRequest(t, ts, "POST", "/v1/apps", "application/json", body, ts.AdminToken())
	if code != http.StatusUnprocessableEntity || !strings.Contains(out, "classes[0].tasks") {
		t.Fatalf("json apply with bad tasks = %d %s", code, out)
	}
	if apps, _ := ts.admin.ListApps(bg); len(apps) != 0 {
		t.Fatalf("invalid apps were stored: %+v", apps)
	}
}

func TestPlacementErrorStoresNothing(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ts.join(t, "s1", 0, nil)
	// 4 CPUs of capacity, 1000 tasks of 10m would fit; 100 of 100m do not.
	huge := strings.Replace(oneClassApp("big", 100, ""), "cpu: 10m", "cpu: 100m", 1)
	_, err := ts.admin.ApplyApp(bg, []byte(huge))
	if api.HTTPStatus(err) != http.StatusUnprocessableEntity {
		t.Fatalf("apply of an app that does not fit = %v, want 422", err)
	}
	if apps, _ := ts.admin.ListApps(bg); len(apps) != 0 {
		t.Fatalf("an app that does not compile was stored: %+v", apps)
	}
	plan, err := ts.admin.Plan(bg, []byte(oneClassApp("small", 2, "")))
	if err != nil || len(plan.Changes) == 0 || plan.Apps[0].Action != "created" {
		t.Fatalf("plan = %+v, %v", plan, err)
	}
	if apps, _ := ts.admin.ListApps(bg); len(apps) != 0 {
		t.Fatalf("plan stored something: %+v", apps)
	}
}

// Two writers race on one app without If-Match: every apply lands, in a
// single order, each answer naming the revision it replaced, so the chain
// of revisions has no gap (no update lost silently), and each is an event.
func TestRacingAppliesAreSerialized(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ts.join(t, "s1", 0, nil)
	const n = 12
	var wg sync.WaitGroup
	results := make([]api.AppChange, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("race", i+1, "")))
			errs[i] = err
			if err == nil {
				results[i] = res.Apps[0]
			}
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
	}
	sort.Slice(results, func(i, j int) bool { return results[i].Revision < results[j].Revision })
	for i, r := range results {
		want := int64(0)
		if i > 0 {
			want = results[i-1].Revision
		}
		if r.PreviousRevision != want {
			t.Fatalf("apply at revision %d replaced %d, want %d: an update was lost (%+v)", r.Revision, r.PreviousRevision, want, results)
		}
	}
	evs, err := ts.admin.ListEvents(bg, 1000)
	if err != nil {
		t.Fatal(err)
	}
	applies := 0
	for _, e := range evs {
		if e.Action == "app.apply" && e.Object == "app/race" {
			applies++
		}
	}
	if applies != n {
		t.Fatalf("%d apply events, want %d", applies, n)
	}

	// With If-Match, a stale revision is refused.
	last := results[n-1].Revision
	stale := results[0].Revision
	_, err = ts.admin.ApplyApp(bg, []byte(oneClassApp("race", 3, "")), api.ApplyOptions{IfMatch: &stale})
	if api.HTTPStatus(err) != http.StatusConflict || !strings.Contains(err.Error(), fmt.Sprint(last)) {
		t.Fatalf("stale If-Match = %v, want 409 naming revision %d", err, last)
	}
	zero := int64(0)
	if _, err = ts.admin.ApplyApp(bg, []byte(oneClassApp("race", 3, "")), api.ApplyOptions{IfMatch: &zero}); api.HTTPStatus(err) != http.StatusConflict {
		t.Fatalf("If-Match 0 on an existing app = %v, want 409", err)
	}
	res, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("race", 3, "")), api.ApplyOptions{IfMatch: &last})
	if err != nil || res.Apps[0].PreviousRevision != last {
		t.Fatalf("current If-Match = %+v, %v", res, err)
	}
}

// rawRequest sends bytes as they are, for malformed input.
func rawRequest(t *testing.T, ts *testServer, method, path, ctype string, body []byte, token string) (int, string) {
	t.Helper()
	pool, _ := apiPool(ts)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: pool}, Timeout: 10 * time.Second}
	req, _ := http.NewRequest(method, ts.URL()+path, bytes.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAuth(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	a1 := ts.join(t, "s1", 0, nil)
	a2 := ts.join(t, "s2", 1, nil)
	eventually(t, 10*time.Second, "desired states for both", func() (bool, string) {
		d1, e1 := a1.c.Desired(bg, "s1", 0, 0)
		d2, e2 := a2.c.Desired(bg, "s2", 0, 0)
		return e1 == nil && e2 == nil && d1.Revision > 0 && d2.Revision > 0, fmt.Sprint(e1, e2)
	})

	check := func(what string, err error, code int) {
		t.Helper()
		if got := api.HTTPStatus(err); got != code {
			t.Errorf("%s: %v (status %d), want %d", what, err, got, code)
		}
	}
	_, err := ts.client(t, "", nil).ListApps(bg)
	check("no token", err, http.StatusUnauthorized)
	_, err = ts.client(t, strings.Repeat("0", 64), nil).ListApps(bg)
	check("wrong token", err, http.StatusUnauthorized)
	_, err = a1.c.ListApps(bg)
	check("agent certificate on an admin route", err, http.StatusUnauthorized)
	_, err = a1.c.Desired(bg, "s2", 0, 0)
	check("agent reading another host's state", err, http.StatusForbidden)
	err = a1.c.ReportStatus(bg, "s2", api.Status{Name: "s2"})
	check("agent writing another host's status", err, http.StatusForbidden)
	err = a1.c.ReportStatus(bg, "s1", api.Status{Name: "s2"})
	check("status naming another host", err, http.StatusForbidden)
	_, err = ts.client(t, ts.AdminToken(), nil).Desired(bg, "s1", 0, 0)
	check("admin token on an agent route", err, http.StatusUnauthorized)
	req, _, _ := joinRequest("s9", 9, nil)
	req.Token = "nope"
	_, err = ts.client(t, "", nil).Join(bg, req)
	check("wrong join token", err, http.StatusUnauthorized)
	req.Token = ts.JoinToken()
	req.Name = "s8" // CSR says s9
	_, err = ts.client(t, "", nil).Join(bg, req)
	check("CSR for another name", err, http.StatusBadRequest)

	if err := a1.c.ReportStatus(bg, "s1", api.Status{Name: "s1", AppliedRevision: 1}); err != nil {
		t.Fatalf("own status: %v", err)
	}
	if err := ts.admin.RemoveServer(bg, "s1"); err != nil {
		t.Fatalf("remove: %v", err)
	}
	_, err = a1.c.Desired(bg, "s1", 0, 0)
	check("removed server reading its state", err, http.StatusForbidden)
	err = a1.c.ReportStatus(bg, "s1", api.Status{Name: "s1"})
	check("removed server reporting", err, http.StatusForbidden)
	req, _, _ = joinRequest("s1", 0, nil)
	req.Token = ts.JoinToken()
	_, err = ts.client(t, "", nil).Join(bg, req)
	check("removed server joining again", err, http.StatusForbidden)
	err = ts.admin.RemoveServer(bg, "nope")
	check("removing an unknown server", err, http.StatusNotFound)
	srv, err := ts.admin.GetServer(bg, "s1")
	if err != nil || srv.State != api.ServerRevoked {
		t.Errorf("removed server shows %+v, %v", srv, err)
	}

	// A second join under the same name supersedes the first certificate.
	again := ts.join(t, "s2", 1, nil)
	_, err = a2.c.Desired(bg, "s2", 0, 0)
	check("superseded certificate", err, http.StatusForbidden)
	if _, err := again.c.Desired(bg, "s2", 0, 0); err != nil {
		t.Errorf("new certificate: %v", err)
	}
}

func TestBadBodies(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{MaxBody: 64 << 10})
	tok := ts.AdminToken()
	cases := []struct {
		name, method, path, ctype string
		body                      []byte
		code                      int
		msg                       string
	}{
		{"oversized yaml", "POST", "/v1/apps", "application/yaml", bytes.Repeat([]byte("# x\n"), 100<<10), http.StatusRequestEntityTooLarge, "larger than"},
		{"malformed json app", "POST", "/v1/apps", "application/json", []byte(`{"name": "x",`), http.StatusBadRequest, "malformed JSON"},
		{"unknown json field", "POST", "/v1/apps/x/scale", "application/json", []byte(`{"class":"a","tasks":1,"extra":1}`), http.StatusBadRequest, "unknown field"},
		{"json of the wrong type", "POST", "/v1/apps/x/scale", "application/json", []byte(`{"class":"a","tasks":"many"}`), http.StatusBadRequest, "tasks"},
		{"empty body", "POST", "/v1/apps/x/scale", "application/json", nil, http.StatusBadRequest, "empty body"},
		{"garbage yaml", "POST", "/v1/apps", "application/yaml", []byte("\x00\x01{[}: :"), http.StatusUnprocessableEntity, "request"},
		{"garbage join", "POST", "/v1/join", "application/json", []byte("not json"), http.StatusBadRequest, "malformed JSON"},
		{"bad index", "GET", "/v1/events?limit=-3", "", nil, http.StatusBadRequest, "limit"},
		{"unknown route", "GET", "/v1/nothing", "", nil, http.StatusNotFound, "no such endpoint"},
	}
	for _, c := range cases {
		code, out := rawRequest(t, ts, c.method, c.path, c.ctype, c.body, tok)
		if code != c.code || !strings.Contains(out, c.msg) {
			t.Errorf("%s: %d %s, want %d containing %q", c.name, code, out, c.code, c.msg)
		}
		var e api.Error
		if c.code != http.StatusNotFound || strings.HasPrefix(c.path, "/v1") {
			if err := json.Unmarshal([]byte(out), &e); err != nil || e.Error == "" {
				t.Errorf("%s: body is not an api.Error: %s", c.name, out)
			}
		}
	}
	a := ts.join(t, "s1", 0, nil)
	_, err := a.c.Desired(bg, "s1", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	code, out := rawRequest(t, ts, "GET", "/healthz", "", nil, "")
	if code != http.StatusOK {
		t.Fatalf("healthz after bad input: %d %s", code, out)
	}
	if _, err := ts.admin.ListApps(bg); err != nil {
		t.Fatalf("server unhealthy after bad input: %v", err)
	}
	// Metrics count requests by route and code.
	code, out = rawRequest(t, ts, "GET", "/metrics", "", nil, "")
	if code != http.StatusOK || !strings.Contains(out, `corridor_http_requests_total{code="413",route="POST /v1/apps"} 1`) {
		t.Fatalf("metrics lack the 413: %d\n%s", code, grep(out, "corridor_"))
	}
	for _, m := range []string{"corridor_compile_duration_seconds", "corridor_hosts{state=\"ready\"}", "corridor_desired_state_revisions_total"} {
		if !strings.Contains(out, m) {
			t.Errorf("metrics lack %s", m)
		}
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// An agent waiting on its revision wakes promptly for a change to its
// host, and does not wake for a change that leaves its host as it was.
func TestLongPoll(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	a1 := ts.join(t, "s1", 0, map[string]string{"zone": "a"})
	a2 := ts.join(t, "s2", 1, map[string]string{"zone": "b"})
	var r1, r2 int64
	eventually(t, 10*time.Second, "desired states for both", func() (bool, string) {
		d1, e1 := a1.c.Desired(bg, "s1", 0, 0)
		d2, e2 := a2.c.Desired(bg, "s2", 0, 0)
		r1, r2 = d1.Revision, d2.Revision
		return e1 == nil && e2 == nil && r1 > 0 && r2 > 0, fmt.Sprint(e1, e2)
	})
	// Let the controller settle (the second join recompiles too).
	ts.settle(t)
	d1, _ := a1.c.Desired(bg, "s1", 0, 0)
	d2, _ := a2.c.Desired(bg, "s2", 0, 0)
	r1, r2 = d1.Revision, d2.Revision

	type woke struct {
		ds  api.DesiredState
		at  time.Time
		err error
	}
	w1, w2 := make(chan woke, 1), make(chan woke, 1)
	parked := ts.hub.parked.Load()
	go func() {
		ds, err := a1.c.Desired(bg, "s1", r1, 20*time.Second)
		w1 <- woke{ds, time.Now(), err}
	}()
	start2 := time.Now()
	go func() {
		ds, err := a2.c.Desired(bg, "s2", r2, 3*time.Second)
		w2 <- woke{ds, time.Now(), err}
	}()
	eventually(t, 10*time.Second, "both long polls parked in the hub", func() (bool, string) {
		n := ts.hub.parked.Load() - parked
		return n >= 2, fmt.Sprintf("%d parked", n)
	})
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("pinned", 2, "a"))); err != nil {
		t.Fatal(err)
	}
	applied := time.Now()
	select {
	case w := <-w1:
		if w.err != nil {
			t.Fatal(w.err)
		}
		lat := w.at.Sub(applied)
		// Woken by the change, not by its 20 s timeout. How fast is
		// the control-plane benchmark's business, not this test's.
		t.Logf("s1 woke %v after the apply returned", lat)
		if lat > 5*time.Second {
			t.Errorf("s1 woke %v after the apply: not woken by the change", lat)
		}
		if w.ds.Revision <= r1 || len(w.ds.State.Guests) != 2 {
			t.Errorf("s1 got revision %d with %d guests, want > %d with 2", w.ds.Revision, len(w.ds.State.Guests), r1)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("s1 did not wake for a change to its host")
	}
	w := <-w2
	if w.err != nil {
		t.Fatal(w.err)
	}
	if w.ds.Revision != r2 || w.at.Sub(start2) < 2900*time.Millisecond {
		t.Fatalf("s2 woke after %v with revision %d (was %d): it must sleep through a change that does not touch it", w.at.Sub(start2), w.ds.Revision, r2)
	}
}

func TestRestartKeepsState(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ts := startServer(t, Config{DataDir: dir})
	a := ts.join(t, "s1", 0, nil)
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("keep", 2, ""))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "tasks placed", func() (bool, string) {
		return len(tasksOf(t, ts.admin, api.Filter{})) == 2, ""
	})
	// The placement and the hosts' desired states are written one after
	// the other: wait for the latter, which is what is compared.
	var before api.DesiredState
	eventually(t, 10*time.Second, "desired state of s1 written", func() (bool, string) {
		var err error
		before, err = a.c.Desired(bg, "s1", 0, 0)
		return err == nil && before.Revision > 0 && len(before.State.Guests) == 2, fmt.Sprint(before.Revision, err)
	})
	admin, join, ca := ts.AdminToken(), ts.JoinToken(), string(ts.CACert())
	ts.stop()

	info, err := os.Stat(filepath.Join(dir, AdminTokenFile))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token: %v, mode %v; want 0600", err, info.Mode())
	}
	ts2 := startServer(t, Config{DataDir: dir})
	if ts2.AdminToken() != admin || ts2.JoinToken() != join || string(ts2.CACert()) != ca {
		t.Fatal("tokens or CA changed across a restart")
	}
	apps, err := ts2.admin.ListApps(bg)
	if err != nil || len(apps) != 1 || apps[0].Name != "keep" {
		t.Fatalf("apps after restart = %+v, %v", apps, err)
	}
	if n := len(tasksOf(t, ts2.admin, api.Filter{})); n != 2 {
		t.Fatalf("%d tasks after restart, want 2", n)
	}
	// The agent's certificate from before the restart still works, and
	// its desired state is the same, at the same revision.
	a2c, err := api.NewClient(ts2.URL(), "", agentTLSOf(t, a))
	if err != nil {
		t.Fatal(err)
	}
	after, err := a2c.Desired(bg, "s1", 0, 0)
	if err != nil || after.Revision != before.Revision {
		t.Fatalf("desired after restart: revision %d, %v; want %d", after.Revision, err, before.Revision)
	}
}

func TestRemovedServerTasksMove(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ts.join(t, "s1", 0, nil)
	ts.join(t, "s2", 1, nil)
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("mover", 1, ""))); err != nil {
		t.Fatal(err)
	}
	var on string
	eventually(t, 10*time.Second, "task placed", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{})
		if len(tt) == 1 {
			on = tt[0].Server
		}
		return len(tt) == 1, ""
	})
	if err := ts.admin.RemoveServer(bg, on); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "task moved off the removed server", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{})
		return len(tt) == 1 && tt[0].Server != on, fmt.Sprint(tt)
	})
	if _, err := ts.admin.HostDesired(bg, on); api.HTTPStatus(err) != http.StatusNotFound {
		t.Errorf("removed server's desired state: %v, want 404", err)
	}
}

// A server that stops reporting is down after the heartbeat timeout and
// its tasks move; one that keeps reporting keeps them.
func TestHeartbeatTimeout(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{HeartbeatTimeout: 1500 * time.Millisecond})
	a1 := ts.join(t, "s1", 0, map[string]string{"zone": "a"})
	ts.join(t, "s2", 1, map[string]string{"zone": "b"})
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			a1.c.ReportStatus(ctx, "s1", api.Status{Name: "s1"})
			sleepCtx(ctx, 200*time.Millisecond)
		}
	}()
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("hb", 2, ""))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "both tasks on s1 once s2 is down", func() (bool, string) {
		tt := tasksOf(t, ts.admin, api.Filter{})
		ok := len(tt) == 2
		for _, x := range tt {
			ok = ok && x.Server == "s1"
		}
		return ok, fmt.Sprint(tt)
	})
	srv, err := ts.admin.GetServer(bg, "s2")
	if err != nil || srv.State != spec.ServerDown {
		t.Fatalf("s2 = %+v, %v; want down", srv, err)
	}
}

// A long-poll outlives the server's ordinary read and write timeouts.
// (The timeout is 2 s, not less: an ordinary request, such as the join's,
// must fit in it under -race on a loaded machine; at 300 ms the server's
// write deadline cut a join's answer mid-record: "tls: bad record MAC".)
func TestLongPollOutlivesServerTimeouts(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{RequestTimeout: 2 * time.Second})
	a := ts.join(t, "s1", 0, nil)
	var rev int64
	eventually(t, 10*time.Second, "a desired state", func() (bool, string) {
		ds, err := a.c.Desired(bg, "s1", 0, 0)
		rev = ds.Revision
		return err == nil && rev > 0, fmt.Sprint(err)
	})
	ts.settle(t)
	ds, _ := a.c.Desired(bg, "s1", 0, 0)
	start := time.Now()
	got, err := a.c.Desired(bg, "s1", ds.Revision, 4*time.Second)
	if err != nil {
		t.Fatalf("long-poll across the server timeouts: %v", err)
	}
	if el := time.Since(start); got.Revision != ds.Revision || el < 3900*time.Millisecond {
		t.Fatalf("long-poll answered after %v with revision %d (was %d)", el, got.Revision, ds.Revision)
	}
}

// A key rotation raises the server's generation, reaches that host's
// desired state and no other's, survives a re-join, and the public key the
// agent then reports replaces the old one in the peers' states.
func TestRotateKey(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	a1 := ts.join(t, "s1", 0, nil)
	a2 := ts.join(t, "s2", 1, nil)
	// One encrypted path between the two servers: s2 holds s1 as a peer.
	app := `apiVersion: corridor/v1
kind: App
name: rot
classes:
  - {name: a, tasks: 1, guest: {runtime: netns, command: [sleep, "1000"]}, resources: {cpu: 100m, memory: 16Mi}, ports: [{port: 80}]}
  - {name: b, tasks: 1, guest: {runtime: netns, command: [sleep, "1000"]}, resources: {cpu: 100m, memory: 16Mi}, ports: [{port: 80}]}
rules:
  - {from: a, to: b, ports: [80], encrypt: true}
`
	if _, err := ts.admin.ApplyApp(bg, []byte(app)); err != nil {
		t.Fatal(err)
	}
	peerKey := func(ds api.DesiredState) string {
		for _, p := range ds.State.Peers {
			if p.Server == "s1" {
				return p.PublicKey
			}
		}
		return ""
	}
	var d2 api.DesiredState
	eventually(t, 10*time.Second, "s2 holds s1 as a peer", func() (bool, string) {
		var err error
		d2, err = a2.c.Desired(bg, "s2", 0, 0)
		return err == nil && peerKey(d2) == a1.req.PublicKey, fmt.Sprint(d2.State.Peers, err)
	})
	ts.settle(t)
	d1, _ := a1.c.Desired(bg, "s1", 0, 0)
	d2, _ = a2.c.Desired(bg, "s2", 0, 0)

	// The controller starts a rotation once the agent has reported (the
	// generation of its key).
	if err := a1.c.ReportStatus(bg, "s1", api.Status{Name: "s1", PublicKey: a1.req.PublicKey}); err != nil {
		t.Fatal(err)
	}
	srv, err := ts.admin.RotateKey(bg, "s1")
	if err != nil || srv.Spec.KeyGeneration != 1 {
		t.Fatalf("rotate-key s1 = generation %d, %v; want 1", srv.Spec.KeyGeneration, err)
	}
	eventually(t, 10*time.Second, "s1's state carries generation 1", func() (bool, string) {
		got, err := a1.c.Desired(bg, "s1", 0, 0)
		return err == nil && got.State.KeyGeneration == 1 && got.Revision > d1.Revision, fmt.Sprint(got.Revision, err)
	})
	ts.settle(t)
	if got, _ := a2.c.Desired(bg, "s2", 0, 0); got.Revision != d2.Revision {
		t.Errorf("s2 got revision %d (was %d) though nothing of it changed yet", got.Revision, d2.Revision)
	}

	// The agent reports its next key (made on the host): the peers' states
	// hold it beside the current one (announce), which stays s1's key.
	newKey := wgKey()
	if err := a1.c.ReportStatus(bg, "s1", api.Status{Name: "s1", PublicKey: a1.req.PublicKey, NextPublicKey: newKey, NextKeyGeneration: 1}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "s2 holds s1's next key", func() (bool, string) {
		got, err := a2.c.Desired(bg, "s2", 0, 0)
		for _, p := range got.State.Peers {
			if p.Server == "s1" && p.PublicKey == a1.req.PublicKey && p.NextPublicKey == newKey {
				return true, ""
			}
		}
		return false, fmt.Sprint(got.State.Peers, err)
	})
	srv, err = ts.admin.GetServer(bg, "s1")
	if err != nil || srv.Spec.PublicKey != a1.req.PublicKey || srv.Spec.Rotation == nil || srv.Spec.Rotation.Phase != spec.RotationAnnounce {
		t.Errorf("s1 = key %s rotation %+v, %v", srv.Spec.PublicKey, srv.Spec.Rotation, err)
	}

	// A re-join keeps the asked generation.
	ts.join(t, "s1", 0, nil)
	if srv, err := ts.admin.GetServer(bg, "s1"); err != nil || srv.Spec.KeyGeneration != 1 {
		t.Errorf("after a re-join: generation %d, %v", srv.Spec.KeyGeneration, err)
	}

	evs, err := ts.admin.ListEvents(bg, 100)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range evs {
		found = found || (e.Action == "server.rotate-key" && e.Object == "server/s1" && strings.Contains(e.Message, "generation 1"))
	}
	if !found {
		t.Errorf("no server.rotate-key event in %+v", evs)
	}

	if _, err := ts.admin.RotateKey(bg, "nope"); api.HTTPStatus(err) != http.StatusNotFound {
		t.Errorf("rotate-key of an unknown server: %v", err)
	}
	if _, err := a1.c.RotateKey(bg, "s1"); api.HTTPStatus(err) != http.StatusUnauthorized {
		t.Errorf("rotate-key with an agent certificate: %v", err)
	}
	if err := ts.admin.RemoveServer(bg, "s2"); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.admin.RotateKey(bg, "s2"); api.HTTPStatus(err) != http.StatusConflict {
		t.Errorf("rotate-key of a removed server: %v", err)
	}
}

// With a rotation interval, the controller rotates every server's key once
// it is older than the interval, one server at a time: never two servers
// with a rotation under way at once. The simulated agents rotate as real
// ones do (simAgent).
func TestScheduledKeyRotation(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{KeyRotation: time.Second})
	names := []string{"s1", "s2", "s3"}
	ctx, cancel := context.WithCancel(bg)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for i, name := range names {
		a := ts.join(t, name, i, nil)
		sim := newSimAgent(a)
		wg.Go(func() {
			for ctx.Err() == nil {
				_ = sim.step(ctx)
				sleepCtx(ctx, 50*time.Millisecond)
			}
		})
	}

	// Three rotations of four phases each, one after the other: generous
	// for a loaded machine under -race.
	deadline := time.Now().Add(90 * time.Second)
	maxUnderWay := 0
	for {
		servers, err := ts.admin.ListServers(bg)
		if err != nil {
			t.Fatal(err)
		}
		underWay, done := 0, 0
		for _, s := range servers {
			if s.Spec.KeyGeneration > s.KeyGeneration {
				underWay++
			}
			if s.KeyGeneration >= 1 {
				done++
			}
		}
		maxUnderWay = max(maxUnderWay, underWay)
		if done == len(names) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 90 s, %d of %d servers have rotated their keys: %+v", done, len(names), servers)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if maxUnderWay > 1 {
		t.Errorf("%d rotations were under way at once; want one at a time", maxUnderWay)
	}
	evs, err := ts.admin.ListEvents(bg, 100)
	if err != nil {
		t.Fatal(err)
	}
	scheduled := 0
	for _, e := range evs {
		if e.Action == "server.rotate-key" && e.Who == "controller" && strings.Contains(e.Message, "scheduled") {
			scheduled++
		}
	}
	if scheduled < len(names) {
		t.Errorf("%d scheduled rotation events, want at least %d: %+v", scheduled, len(names), evs)
	}

	if _, err := New(Config{DataDir: t.TempDir(), KeyRotation: -time.Second}); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Errorf("a negative interval: %v", err)
	}
}
