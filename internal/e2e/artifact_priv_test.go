package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/server"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// TestArtifactDelivery delivers task programs through the control plane's
// artifact store on a lab: the corridor binary itself (running a sample
// tier) and a .tar.gz whose program needs a file beside it, both pushed,
// named by classes, fetched by the agents, run. Then an artifact the
// store does not hold, and one whose stored bytes no longer match their
// hash, each leave their task failed with the reason in the task's
// status, never run.
func TestArtifactDelivery(t *testing.T) {
	f := upFleetOpts(t, func(o *lab.Options) { o.Servers = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	push := func(b []byte) string { return pushArtifact(ctx, t, f.c, b) }
	bin, err := os.ReadFile(testnet.Binary(t, "sample"))
	if err != nil {
		t.Fatal(err)
	}
	binSum := push(bin)
	// The archive's program sources a file beside it: it runs only if the
	// guest sees the whole unpacked tree.
	tgz := tarGz(t, map[string]string{
		"bin/web":     "#!/bin/sh\n. \"$(dirname \"$0\")/../lib/conf.sh\"\nexec sleep \"$SLEEP\"\n",
		"lib/conf.sh": "SLEEP=100000\n",
	})
	tgzSum := push(tgz)

	app := fmt.Sprintf(`apiVersion: corridor/v1
kind: App
name: artok
classes:
  - name: www
    tasks: 2
    guest:
      runtime: netns
      artifact:
        url: corridor://%s
        sha256: %s
        args: [sample, db, --listen, ":80"]
    resources: {cpu: 50m, memory: 64Mi}
    ports: [{port: 80}]
  - name: tar
    tasks: 1
    guest:
      runtime: netns
      artifact: {url: corridor://%s, sha256: %s, archive: true, run: bin/web}
    resources: {cpu: 50m, memory: 32Mi}
`, binSum, binSum, tgzSum, tgzSum)
	name := f.applyOwn(t, []byte(app))
	waitTasks(t, f.c, name, 3, func(st *api.TaskStatus) bool { return st.State == api.TaskRunning }, "running")
	f.mustVerify(t, name)

	// Not in the store: failed, saying so.
	missing := strings.Repeat("0", 64)
	bad := strings.NewReplacer("name: artok", "name: artbad", binSum, missing).Replace(app)
	bad = bad[:strings.Index(bad, "  - name: tar")]
	badName := f.applyOwn(t, []byte(bad))
	waitTasks(t, f.c, badName, 2, func(st *api.TaskStatus) bool {
		return st.State == api.TaskFailed && strings.Contains(st.Message, "not in this server's store")
	}, "failed: not in the store")

	// Stored bytes that do not match their hash (a corrupted store): the
	// agents refuse them.
	corrupt := append([]byte("#!/bin/sh\nexec sleep 100000\n"), byte(os.Getpid()))
	corruptSum := push(corrupt)
	if err := os.Chmod(filepath.Join(f.lab.ServerDataDir, server.ArtifactsDir, corruptSum), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.lab.ServerDataDir, server.ArtifactsDir, corruptSum), []byte("#!/bin/sh\necho evil\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	wrong := strings.NewReplacer("name: artok", "name: artwrong", binSum, corruptSum, `args: [sample, db, --listen, ":80"]`, "args: []").Replace(app)
	wrong = wrong[:strings.Index(wrong, "  - name: tar")]
	wrongName := f.applyOwn(t, []byte(wrong))
	waitTasks(t, f.c, wrongName, 2, func(st *api.TaskStatus) bool {
		return st.State == api.TaskFailed && strings.Contains(st.Message, "sha256 mismatch")
	}, "failed: sha256 mismatch")
	// Never run: no blob under that hash on any server.
	for _, s := range f.lab.Servers {
		p := filepath.Join(agent.ArtifactsDir(s.StateDir), "blobs", corruptSum)
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s: a file under the wrong hash was kept: %s", s.Name, p)
		}
	}
	// The good app still runs.
	waitTasks(t, f.c, name, 3, func(st *api.TaskStatus) bool { return st.State == api.TaskRunning }, "running")
}

// pushArtifact pushes b to the control plane's store and gives its
// sha256.
func pushArtifact(ctx context.Context, t testing.TB, c *api.Client, b []byte) string {
	t.Helper()
	sum := sha256.Sum256(b)
	hexSum := hex.EncodeToString(sum[:])
	info, err := c.PushArtifact(ctx, hexSum, bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	if info.SHA256 != hexSum {
		t.Fatalf("pushed %s, store says %s", hexSum, info.SHA256)
	}
	return hexSum
}

// waitTasks waits until app has n tasks and every one's status passes ok.
func waitTasks(t testing.TB, c *api.Client, app string, n int, ok func(*api.TaskStatus) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ts, err := c.ListTasks(ctx, api.Filter{App: app})
		cancel()
		good := 0
		var b strings.Builder
		for _, x := range ts {
			fmt.Fprintf(&b, "%s on %s: %+v; ", x.ID, x.Server, x.Status)
			if x.Status != nil && ok(x.Status) {
				good++
			}
		}
		last = fmt.Sprintf("%d tasks (err %v): %s", len(ts), err, b.String())
		if err == nil && len(ts) == n && good == n {
			t.Logf("%s: %s", app, last)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: tasks not all %s within 90s: %s", app, what, last)
}

func tarGz(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}
