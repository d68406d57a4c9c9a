package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

func TestTaskReasonShowsFailure(t *testing.T) {
	var x api.TaskInfo
	x.Reason.Chosen = "spread: no task of the app yet"
	if got := taskReason(x); got != x.Reason.Chosen {
		t.Errorf("unreported: %q", got)
	}
	x.Status = &api.TaskStatus{State: api.TaskRunning, Message: "ignored"}
	if got := taskReason(x); got != x.Reason.Chosen {
		t.Errorf("running: %q", got)
	}
	x.Status = &api.TaskStatus{State: api.TaskFailed, Message: "artifact: sha256 mismatch: want a, got b"}
	if got := taskReason(x); got != x.Status.Message {
		t.Errorf("failed: %q, want the failure", got)
	}
}

// push --vm prints the lines of a runtime vm class (no run, no args), and
// they decode as one.
func TestArtifactPushVMLines(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/artifacts" {
			http.Error(w, `{"error":"no"}`, http.StatusNotFound)
			return
		}
		b, _ := io.ReadAll(r.Body)
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		json.NewEncoder(w).Encode(api.ArtifactInfo{SHA256: h, Size: int64(len(b)), URL: spec.ArtifactScheme + "://" + h})
	}))
	defer srv.Close()
	t.Setenv("CORRIDOR_CONFIG", filepath.Join(t.TempDir(), "config.json"))
	t.Setenv("CORRIDOR_SERVER", srv.URL)
	t.Setenv("CORRIDOR_TOKEN", "t")
	t.Setenv("CORRIDOR_CA", "")
	dir := t.TempDir()
	for _, name := range []string{"guest.tgz", "disk.img"} {
		file := filepath.Join(dir, name)
		if err := os.WriteFile(file, []byte("image bytes of "+name), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _, err := run(t, "artifact", "push", file, "--vm")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitN(out, "\n", 2)
		if len(lines) != 2 || strings.Contains(out, "run:") || strings.Contains(out, "args") || strings.Contains(out, "archive: true") != strings.HasSuffix(name, ".tgz") {
			t.Fatalf("%s: printed %q", name, out)
		}
		// The printed lines sit under a class's guest (indented 4): put
		// them under one (indented 6).
		doc := "apiVersion: corridor/v1\nkind: App\nname: a\nclasses:\n  - name: c\n    tasks: 1\n    resources: {cpu: 1, memory: 256Mi}\n    guest:\n      runtime: vm\n      command: [corridor, sample, db]\n"
		for _, l := range strings.Split(strings.TrimRight(lines[1], "\n"), "\n") {
			doc += "  " + l + "\n"
		}
		if _, err := spec.DecodeApps("push.yaml", []byte(doc)); err != nil {
			t.Fatalf("%s: the printed lines do not make a vm class: %v\n%s", name, err, doc)
		}
	}
}
