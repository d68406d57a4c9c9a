package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/verify"
)

// Verify runs are stored (the newest api.MaxVerifyRuns per app), the
// report of an app names the last one and checks offline with the CA, in
// HTML and JSON; a one-byte edit fails the check.
func TestReportAgainstServer(t *testing.T) {
	admin, _ := serveFleet(t, "s1", "s2")
	ctx := context.Background()
	if _, errOut, err := run(t, "apply", "-f", writeApp(t, "shop", 2)); err != nil {
		t.Fatalf("apply: %v\n%s", err, errOut)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		tasks, err := admin.ListTasks(ctx, api.Filter{App: "shop"})
		if err == nil && len(tasks) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shop not placed: %v %v", tasks, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := admin.PostVerifyRun(ctx, "nope", []byte(`{"app":"nope","checks":[]}`)); api.HTTPStatus(err) != 404 {
		t.Errorf("a run of an unknown app: %v, want 404", err)
	}
	if _, err := admin.PostVerifyRun(ctx, "shop", []byte(`{"app":"blog","checks":[]}`)); api.HTTPStatus(err) != 400 {
		t.Errorf("a run of another app: %v, want 400", err)
	}
	for i := range api.MaxVerifyRuns + 5 {
		rep := verify.Report{App: "shop", Started: time.Now().UTC(), Finished: time.Now().UTC(), Checks: []verify.Check{
			{App: "shop", FromTask: "shop/web/0", ToTask: "shop/db/0", FromServer: "s1", ToServer: "s2", Protocol: "tcp",
				Port: 5432 + i, Expect: verify.Encrypted, Observed: verify.Encrypted, OK: true, WireGuardFrames: uint64(i + 1), Time: time.Now().UTC()},
		}}
		b, _ := json.Marshal(rep)
		run, err := admin.PostVerifyRun(ctx, "shop", b)
		if err != nil || !run.OK || run.Passed != 1 {
			t.Fatalf("post run %d: %+v %v", i, run, err)
		}
	}
	runs, err := admin.VerifyRuns(ctx, "shop", 0)
	if err != nil || len(runs) != api.MaxVerifyRuns {
		t.Fatalf("stored runs: %d (%v), want the newest %d", len(runs), err, api.MaxVerifyRuns)
	}
	var newest verify.Report
	if err := json.Unmarshal(runs[0].Report, &newest); err != nil || newest.Checks[0].Port != 5432+api.MaxVerifyRuns+4 {
		t.Fatalf("newest run first: %+v %v", newest, err)
	}
	last, err := admin.LastVerifyRuns(ctx)
	if err != nil || len(last) != 1 || last[0].ID != runs[0].ID || last[0].Report != nil {
		t.Fatalf("last runs = %+v, %v", last, err)
	}

	dir := t.TempDir()
	html, js := filepath.Join(dir, "shop.html"), filepath.Join(dir, "shop.json")
	if _, errOut, err := run(t, "report", "shop", "--out", html); err != nil {
		t.Fatalf("report: %v\n%s", err, errOut)
	}
	if _, errOut, err := run(t, "report", "shop", "-o", "json", "--out", js); err != nil {
		t.Fatalf("report -o json: %v\n%s", err, errOut)
	}
	page, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"app shop", "shop/web/1", runs[0].ID, "tcp/5432", "encrypted", "s1", "app.apply", "verify.run"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("the HTML report lacks %q", want)
		}
	}
	for _, f := range []string{html, js} {
		out, errOut, err := run(t, "report", "verify", f)
		if err != nil || !strings.Contains(out, "intact: report of app shop") || !strings.Contains(out, runs[0].ID) {
			t.Fatalf("report verify %s: %v\n%s%s", f, err, out, errOut)
		}
		data, _ := os.ReadFile(f)
		i := strings.Index(string(data), "shop/web/1")
		data[i+len("shop/web/")] = '7' // one byte: shop/web/7
		edited := filepath.Join(dir, "edited-"+filepath.Base(f))
		if err := os.WriteFile(edited, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, _, err := run(t, "report", "verify", edited); err == nil || !strings.Contains(err.Error(), "bad signature") {
			t.Errorf("report verify of an edited %s: %v\n%s", f, err, out)
		}
	}
	// A report of an app that does not exist.
	if _, _, err := run(t, "report", "nope", "--out", filepath.Join(dir, "x.html")); err == nil || !strings.Contains(err.Error(), "no app") {
		t.Errorf("report of an unknown app: %v", err)
	}
	// Deleting the app deletes its runs.
	if err := admin.DeleteApp(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	if runs, err := admin.VerifyRuns(ctx, "shop", 0); err != nil || len(runs) != 0 {
		t.Errorf("runs of a deleted app: %d %v", len(runs), err)
	}
}
