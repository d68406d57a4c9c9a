package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/server"
)

func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := NewRoot(&out, &errb)
	root.SetArgs(args)
	root.SetContext(context.Background())
	err := root.Execute()
	return out.String(), errb.String(), err
}

// The user commands against a real server: login, apply, get, describe,
// scale, delete, server remove and backup.
func TestUserCommandsAgainstServer(t *testing.T) {
	t.Setenv("CORRIDOR_CONFIG", filepath.Join(t.TempDir(), "config.json"))
	t.Setenv("CORRIDOR_SERVER", "")
	t.Setenv("CORRIDOR_TOKEN", "")
	t.Setenv("CORRIDOR_CA", "")

	_, _, err := run(t, "get", "apps")
	if err == nil || !strings.Contains(err.Error(), "corridor login --server") {
		t.Fatalf("get apps without a server: %v; want a hint to log in", err)
	}

	s, dir := startServer(t)

	tok := filepath.Join(dir, server.AdminTokenFile)
	tb, _ := os.ReadFile(tok)
	ca := filepath.Join(dir, server.CACertFile)
	if _, _, err := run(t, "login", "--server", s.URL(), "--token", "wrong"+strings.TrimSpace(string(tb))[5:], "--ca", ca); err == nil || !strings.Contains(err.Error(), "admin.token") {
		t.Fatalf("login with a wrong token: %v", err)
	}
	if _, _, err := run(t, "login", "--server", s.URL(), "--token", strings.TrimSpace(string(tb))); err == nil || !strings.Contains(err.Error(), "ca.crt") {
		t.Fatalf("login without the CA: %v; want a hint about ca.crt", err)
	}
	if _, stderr, err := run(t, "login", "--server", s.URL(), "--token", strings.TrimSpace(string(tb)), "--ca", ca); err != nil {
		t.Fatalf("login: %v %s", err, stderr)
	}
	info, err := os.Stat(os.Getenv("CORRIDOR_CONFIG"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v %v", err, info)
	}

	// One server, joined as an agent would.
	agent := joinServer(t, s, "s1")

	app := writeApp(t, "demo", 2)
	out, _, err := run(t, "apply", "-f", app)
	if err != nil || !strings.Contains(out, "demo") || !strings.Contains(out, "created") {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: corridor/v1\nkind: App\nname: x\nclasses: []\nbogus: 1\n"), 0o644)
	if _, _, err := run(t, "apply", "-f", bad); err == nil || !strings.Contains(err.Error(), "bad.yaml:5") {
		t.Fatalf("apply of a bad file: %v; want bad.yaml:5", err)
	}

	out, _, err = run(t, "get", "apps", "-o", "json")
	var apps []api.App
	if err != nil || json.Unmarshal([]byte(out), &apps) != nil || len(apps) != 1 {
		t.Fatalf("get apps -o json: %v\n%s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _, err = run(t, "get", "tasks", "--app", "demo")
		if err == nil && strings.Count(out, "demo/") == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("get tasks: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, args := range [][]string{
		{"get", "servers"}, {"get", "paths"}, {"get", "events", "-o", "yaml"},
		{"describe", "app", "demo"}, {"describe", "task", "demo/db/0"}, {"describe", "server", "s1"},
	} {
		out, _, err := run(t, args...)
		if err != nil || strings.TrimSpace(out) == "" {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	out, _, _ = run(t, "describe", "app", "demo")
	if !strings.Contains(out, "demo/web/1") || !strings.Contains(out, "encrypted") || !strings.Contains(out, "Source:") {
		t.Fatalf("describe app lacks tasks, paths or source:\n%s", out)
	}
	if _, _, err := run(t, "describe", "task", "demo/nope/0"); err == nil || !strings.Contains(err.Error(), "get tasks") {
		t.Fatalf("describe of a missing task: %v", err)
	}
	if _, _, err := run(t, "scale", "demo", "web", "3"); err != nil {
		t.Fatalf("scale: %v", err)
	}
	out, _, _ = run(t, "get", "apps")
	if !strings.Contains(out, "demo") {
		t.Fatalf("get apps table:\n%s", out)
	}
	snap := filepath.Join(t.TempDir(), "backup.snapshot")
	if _, _, err := run(t, "server", "backup", "--out", snap); err != nil {
		t.Fatalf("backup: %v", err)
	}
	if fi, err := os.Stat(snap); err != nil || fi.Size() < 1024 {
		t.Fatalf("backup file: %v %v", err, fi)
	}
	if _, _, err := run(t, "delete", "app", "demo"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, _, err := run(t, "delete", "app", "demo"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("second delete: %v; want 404", err)
	}
	// Key rotation: asked, shown as under way; --wait gives up with a hint
	// when no agent answers.
	if _, errOut, err := run(t, "server", "rotate-key", "s1"); err != nil || !strings.Contains(errOut, "generation 1") {
		t.Fatalf("server rotate-key: %v %q", err, errOut)
	}
	if out, _, _ := run(t, "get", "servers"); !strings.Contains(out, "0->1") {
		t.Fatalf("rotation under way not shown:\n%s", out)
	}
	if _, _, err := run(t, "server", "rotate-key", "s1", "--wait", "--timeout", "300ms"); err == nil || !strings.Contains(err.Error(), "is the agent running") {
		t.Fatalf("rotate-key --wait with no agent: %v", err)
	}
	// The agent reports a key of the generation asked: --wait returns.
	reported := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		reported <- agent.ReportStatus(context.Background(), "s1", api.Status{Name: "s1", PublicKey: "bmV3LWtleS1vZi1zMS0wMDAwMDAwMDAwMDAwMDAwMDA=", KeyGeneration: 3})
	}()
	if _, errOut, err := run(t, "server", "rotate-key", "s1", "--wait", "--timeout", "20s"); err != nil || !strings.Contains(errOut, "new key in use (generation 3") {
		t.Fatalf("rotate-key --wait with an agent answering: %v %q", err, errOut)
	}
	if err := <-reported; err != nil {
		t.Fatal(err)
	}
	// What the agent says of flow offload is in describe server.
	if err := agent.ReportStatus(context.Background(), "s1", api.Status{Name: "s1", PublicKey: "bmV3LWtleS1vZi1zMS0wMDAwMDAwMDAwMDAwMDAwMDA=", KeyGeneration: 3,
		FlowOffload: "on", OffloadedFlows: 2}); err != nil {
		t.Fatal(err)
	}
	if out, _, _ := run(t, "describe", "server", "s1"); !strings.Contains(out, "on, 2 plain connections offloaded") {
		t.Fatalf("describe server lacks the flow offload:\n%s", out)
	}
	if _, _, err := run(t, "server", "rotate-key"); err == nil || !strings.Contains(err.Error(), "--all") {
		t.Fatalf("rotate-key with no server: %v", err)
	}
	if _, _, err := run(t, "server", "rotate-key", "nope"); err == nil || !strings.Contains(err.Error(), "no server named nope") {
		t.Fatalf("rotate-key of an unknown server: %v", err)
	}
	if _, _, err := run(t, "server", "remove", "s1"); err != nil {
		t.Fatalf("server remove: %v", err)
	}
	out, _, _ = run(t, "get", "servers")
	if !strings.Contains(out, api.ServerRevoked) {
		t.Fatalf("removed server not shown as removed:\n%s", out)
	}
}
