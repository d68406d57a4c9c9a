package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// A live plan against a real server: nothing to change once an app is
// applied and placed (exit 0); a scale-up shows the tasks added with their
// reason, the encrypted paths added for web -> db, and the hosts touched
// (exit 2); apply --dry-run says the same and stores nothing.
func TestLivePlan(t *testing.T) {
	admin, _ := serveFleet(t, "s1", "s2")
	one, three := writeApp(t, "shop", 1), writeApp(t, "shop", 3)
	if _, errOut, err := run(t, "apply", "-f", one); err != nil {
		t.Fatalf("apply: %v\n%s", err, errOut)
	}
	// The controller places the tasks and writes the hosts' states; until
	// then a plan still sees changes.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, errOut, err := run(t, "plan", "-f", one)
		if err == nil {
			if !strings.Contains(errOut, "nothing would change (exit 0)") || !strings.Contains(out, "tasks: no change") {
				t.Fatalf("plan of the applied spec:\n%s\n%s", out, errOut)
			}
			break
		}
		if exitCode(err) != exitChanges {
			t.Fatalf("plan of the applied spec: %v\n%s", err, errOut)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the plan of the applied spec still shows changes after 30s:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	before, err := admin.GetApp(context.Background(), "shop")
	if err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{{"plan", "-f", three}, {"apply", "--dry-run", "-f", three}} {
		out, errOut, err := run(t, args...)
		if exitCode(err) != exitChanges {
			t.Fatalf("%v: exit %d (%v), want %d\n%s\n%s", args, exitCode(err), err, exitChanges, out, errOut)
		}
		for _, want := range []string{"shop  updated", "add     shop/web/1", "add     shop/web/2",
			"paths, per class pair:", "shop  web   db  +       shop/web/1 -> shop/db/0", "tcp/5432", "hosts touched:", "guests +shop/web/"} {
			if !strings.Contains(out, want) {
				t.Errorf("%v: output lacks %q:\n%s", args, want, out)
			}
		}
		if !strings.Contains(errOut, "2 tasks to add, 0 to move, 0 to remove; 2 paths added, 0 removed") {
			t.Errorf("%v: summary:\n%s", args, errOut)
		}
	}

	out, _, err := run(t, "plan", "-f", three, "-o", "json")
	if exitCode(err) != exitChanges {
		t.Fatalf("plan -o json: %v", err)
	}
	var res api.PlanResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("plan -o json is not a PlanResult: %v\n%s", err, out)
	}
	if len(res.Paths) != 1 || res.Paths[0].FromClass != "web" || res.Paths[0].ToClass != "db" || len(res.Paths[0].Added) != 2 || len(res.Paths[0].Removed) != 0 {
		t.Errorf("paths = %+v, want 2 added for web -> db", res.Paths)
	}
	for _, p := range res.Paths[0].Added {
		if p.Kind != "encrypted" && p.Kind != "local" {
			t.Errorf("web -> db path %+v is not encrypted", p)
		}
	}
	if len(res.Hosts) == 0 {
		t.Errorf("no host touched: %+v", res)
	}
	after, err := admin.GetApp(context.Background(), "shop")
	if err != nil || after.Revision != before.Revision || after.Spec.Classes[0].Tasks != 1 {
		t.Errorf("a dry run stored something: %+v (%v)", after, err)
	}

	// Scaling down removes tasks and their paths, with the reason.
	if _, errOut, err := run(t, "apply", "-f", three); err != nil {
		t.Fatalf("apply 3: %v\n%s", err, errOut)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		out, _, err = run(t, "plan", "-f", one)
		if exitCode(err) == exitChanges && strings.Contains(out, "remove  shop/web/2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("scale-down plan (exit %d):\n%s", exitCode(err), out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(out, "fewer tasks") || !strings.Contains(out, "shop  web   db  -") {
		t.Errorf("scale-down plan lacks the reason or the removed paths:\n%s", out)
	}
}
