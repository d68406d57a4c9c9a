package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An app that does not fit: apply refuses it and says why; with
// --allow-pending it is stored with a warning, apply --wait returns
// (exit 1) as soon as the rest has settled, naming the pending task, and
// get tasks / describe show it pending with the reason.
func TestApplyAllowPendingAndWait(t *testing.T) {
	admin, agents := serveFleet(t, "s1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go fakeAgents(ctx, admin, agents)

	// Two db tasks of 3 cpu on one server of 4: db/1 fits nowhere.
	p := filepath.Join(t.TempDir(), "big.yaml")
	doc := `apiVersion: corridor/v1
kind: App
name: bigp
classes:
  - name: web
    tasks: 1
    guest: {runtime: netns, command: [sleep, infinity]}
    resources: {cpu: 10m, memory: 4Mi}
  - name: db
    tasks: 2
    guest: {runtime: netns, command: [sleep, infinity]}
    resources: {cpu: 3, memory: 4Mi}
rules:
  - {from: web, to: db, ports: [5432], encrypt: true}
`
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, "apply", "-f", p); err == nil || !strings.Contains(err.Error(), "bigp/db/1 would be pending") {
		t.Fatalf("apply of an app that does not fit: %v", err)
	}
	start := time.Now()
	_, stderr, err := run(t, "apply", "-f", p, "--allow-pending", "--wait", "--timeout", "60s")
	if err == nil || !strings.Contains(err.Error(), "task bigp/db/1: no server fits") {
		t.Fatalf("apply --allow-pending --wait: %v (stderr %s)", err, stderr)
	}
	if time.Since(start) > 50*time.Second {
		t.Errorf("apply --wait took %s: it waited for the pending task", time.Since(start))
	}
	if !strings.Contains(stderr, "warning: task bigp/db/1 is pending: no server fits") {
		t.Errorf("no warning on stderr: %s", stderr)
	}
	out, _, err := run(t, "get", "tasks", "--app", "bigp")
	if err != nil {
		t.Fatal(err)
	}
	var row string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "bigp/db/1 ") {
			row = l
		}
	}
	if f := strings.Fields(row); len(f) < 6 || f[1] != "-" || f[3] != "pending" || !strings.Contains(row, "no server fits: needs cpu 3000m") {
		t.Errorf("get tasks row for the pending task: %q\n%s", row, out)
	}
	out, _, err = run(t, "describe", "task", "bigp/db/1")
	if err != nil || !strings.Contains(out, "Pending:") || !strings.Contains(out, "the closest, s1") {
		t.Errorf("describe task: %v\n%s", err, out)
	}
	out, _, err = run(t, "describe", "app", "bigp")
	if err != nil || !strings.Contains(out, "no server yet: no server fits") {
		t.Errorf("describe app: %v\n%s", err, out)
	}
}
