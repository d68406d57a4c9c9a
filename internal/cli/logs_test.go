package cli

import (
	"bytes"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/guest"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := NewRoot(&out, &errb)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// writeTaskLog writes a task's log where a runtime with state directory
// runtimeDir keeps it.
func writeTaskLog(t *testing.T, runtimeDir, task, content string) {
	t.Helper()
	p := guest.LogPath(runtimeDir, task)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLogsLocal(t *testing.T) {
	dir := t.TempDir()
	writeTaskLog(t, agent.GuestsDir(dir), "shop/web/0", "a\nb\nc\n")
	out, err := runCLI(t, "logs", "--local", "--state-dir", dir, "--lines", "2", "shop/web/0")
	if err != nil || out != "b\nc\n" {
		t.Fatalf("logs --local = %q, %v", out, err)
	}
	if _, err := runCLI(t, "logs", "--local", "--state-dir", dir, "shop/db/0"); err == nil || !strings.Contains(err.Error(), "no log") {
		t.Fatalf("missing log: %v", err)
	}
	if _, err := runCLI(t, "logs", "--local", "--state-dir", dir, "web"); err == nil || !strings.Contains(err.Error(), "TASK") {
		t.Fatalf("bad task ID: %v", err)
	}
}

// TestLogsLocalVM: a VM task's log (its serial console, kept by the VM
// runtime in its own state directory) is found by --local too.
func TestLogsLocalVM(t *testing.T) {
	dir := t.TempDir()
	writeTaskLog(t, agent.VMsDir(dir), "shop/db/0", "boot\ncorridor: ready\ndb up\n")
	out, err := runCLI(t, "logs", "--local", "--state-dir", dir, "--lines", "1", "shop/db/0")
	if err != nil || out != "db up\n" {
		t.Fatalf("logs --local of a VM task = %q, %v", out, err)
	}
	_, err = runCLI(t, "logs", "--local", "--state-dir", dir, "shop/web/0")
	if err == nil || !strings.Contains(err.Error(), "no log") || !strings.Contains(err.Error(), agent.VMsDir(dir)) {
		t.Fatalf("missing log: %v", err)
	}
}

// TestLogsThroughTheServer pins the contract with the server: GET
// /v1/tasks/{task}/logs with the task ID escaped as one path segment,
// lines and follow in the query, the admin token as a bearer token.
func TestLogsThroughTheServer(t *testing.T) {
	var got *http.Request
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tasks/{task}/logs", func(w http.ResponseWriter, r *http.Request) {
		got = r.Clone(r.Context())
		if r.PathValue("task") != "shop/web/0" {
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":"no task ` + r.PathValue("task") + `"}`))
			return
		}
		w.Write([]byte("x\ny\n"))
	})
	srv := httptest.NewTLSServer(mux)
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CORRIDOR_CONFIG", filepath.Join(dir, "config.json"))
	t.Setenv("CORRIDOR_SERVER", srv.URL)
	t.Setenv("CORRIDOR_TOKEN", "admin-secret")
	t.Setenv("CORRIDOR_CA", ca)

	out, err := runCLI(t, "logs", "-f", "--lines", "7", "shop/web/0")
	if err != nil || out != "x\ny\n" {
		t.Fatalf("logs = %q, %v", out, err)
	}
	if got.URL.EscapedPath() != "/v1/tasks/shop%2Fweb%2F0/logs" || got.URL.Query().Get("lines") != "7" ||
		got.URL.Query().Get("follow") != "1" || got.Header.Get("Authorization") != "Bearer admin-secret" {
		t.Fatalf("request %s %s, auth %q", got.Method, got.URL, got.Header.Get("Authorization"))
	}
	_, err = runCLI(t, "logs", "shop/db/0")
	if err == nil || !strings.Contains(err.Error(), "no task shop/db/0") || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unknown task: %v", err)
	}
}
