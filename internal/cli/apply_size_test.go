package cli

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// apply refuses a file over the spec's size limit before it sends
// anything, naming the file and the limit; one at the limit is sent.
func TestApplyRefusesOversizedFileBeforeSending(t *testing.T) {
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.Error(w, `{"error":"no"}`, http.StatusTeapot)
	}))
	defer srv.Close()
	t.Setenv("CORRIDOR_CONFIG", filepath.Join(t.TempDir(), "config.json"))
	t.Setenv("CORRIDOR_SERVER", srv.URL)
	t.Setenv("CORRIDOR_TOKEN", "t")
	t.Setenv("CORRIDOR_CA", "")

	dir := t.TempDir()
	big := filepath.Join(dir, "big.yaml")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil { // sparse: 64 MiB, no disk used
		t.Fatal(err)
	}
	f.Close()
	_, _, err = run(t, "apply", "-f", big)
	if err == nil || !strings.Contains(err.Error(), big) || !strings.Contains(err.Error(), "1048576 bytes (1 MiB)") ||
		!strings.Contains(err.Error(), "67108864 bytes") || !strings.Contains(err.Error(), "nothing was sent") {
		t.Fatalf("apply of a 64 MiB file: %v, want an error naming the file, its size and the limit", err)
	}

	// Stdin just over the limit.
	root := NewRoot(&bytes.Buffer{}, &bytes.Buffer{})
	root.SetArgs([]string{"apply", "-f", "-"})
	root.SetIn(bytes.NewReader(make([]byte, spec.MaxFileSize+1)))
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "stdin holds more than") {
		t.Fatalf("apply of oversized stdin: %v", err)
	}
	if n := requests.Load(); n != 0 {
		t.Fatalf("%d requests reached the server for files over the limit", n)
	}

	// At the limit, the file is sent (this server refuses it).
	at := filepath.Join(dir, "at.yaml")
	if err := os.WriteFile(at, bytes.Repeat([]byte("#"), spec.MaxFileSize), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, _ = run(t, "apply", "-f", at)
	if requests.Load() == 0 {
		t.Fatal("a file at the limit was not sent")
	}
}
