package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/image"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/server"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// TestVMImageArtifact delivers a VM guest's image through the control
// plane's artifact store, as an operator would: the image directory
// `corridor image build` wrote, packed as a .tar.gz and pushed; a class
// with runtime vm names it by its hash, the agents (which have no guest
// image of their own: no --vm-image) fetch it, check it, unpack it and
// boot it, and verify proves the VM's path. Then a VM image whose stored
// bytes no longer match their hash, and one at a URL nobody serves, each
// leave their task failed with the reason, and no QEMU is started for
// them.
func TestVMImageArtifact(t *testing.T) {
	testnet.NeedRoot(t, "boots VMs in a lab")
	imgDir := vmImage(t)
	start := time.Now()
	f := upFleetOpts(t, func(o *lab.Options) {
		o.Servers = 2
		// An image directory that does not exist: only the artifact
		// can give the VM anything to boot.
		o.AgentArgs = append(o.AgentArgs, "--vm-image", filepath.Join(t.TempDir(), "no-image"))
	})
	labUp := time.Since(start)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	push := func(b []byte) string { return pushArtifact(ctx, t, f.c, b) }
	t0 := time.Now()
	tgz := packDir(t, imgDir)
	packed := time.Since(t0)
	imgSum := push(tgz)
	t.Logf("lab up in %s; image packed in %s (%d bytes), pushed in %s", labUp.Round(time.Millisecond), packed.Round(time.Millisecond), len(tgz), (time.Since(t0) - packed).Round(time.Millisecond))
	applied := time.Now()

	app := fmt.Sprintf(`apiVersion: corridor/v1
kind: App
name: vmart
classes:
  - name: app
    tasks: 1
    guest:
      runtime: netns
      command: [corridor, sample, app, --listen, ":8080"]
    resources: {cpu: 100m, memory: 64Mi}
  - name: db
    tasks: 1
    guest:
      runtime: vm
      command: [corridor, sample, db, --listen, ":5432"]
      artifact: {url: "corridor://%s", sha256: %s, archive: true}
    resources: {cpu: "1", memory: 512Mi}
    ports: [{port: 5432}]
rules:
  - from: app
    to: db
    ports: [5432]
    encrypt: true
`, imgSum, imgSum)
	name := f.applyOwn(t, []byte(app))
	waitTasks(t, f.c, name, 2, func(st *api.TaskStatus) bool { return st.State == api.TaskRunning }, "running")
	t.Logf("apply to the VM running (fetched, checked, unpacked, booted): %s", time.Since(applied).Round(time.Millisecond))
	f.verifyWithin(t, name, 60*time.Second)

	// What QEMU boots is the unpacked artifact, in the agent's cache.
	ts, err := f.c.ListTasks(ctx, api.Filter{Task: name + "/db/0"})
	if err != nil || len(ts) != 1 || ts[0].Status == nil {
		t.Fatalf("db task: %+v, %v", ts, err)
	}
	db := ts[0]
	if !strings.HasPrefix(db.Status.Runtime, "vm-") {
		t.Fatalf("db runs as %q, want a VM", db.Status.Runtime)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", qemuPID(t, db.ID)))
	if err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(agent.ArtifactsDir(f.lab.Server(db.Server).StateDir), "trees", imgSum)
	args := strings.Split(string(cmdline), "\x00")
	if !hasArgPair(args, "-kernel", filepath.Join(tree, image.KernelFile)) || !hasArgPair(args, "-initrd", filepath.Join(tree, image.InitrdFile)) {
		t.Fatalf("QEMU does not boot the artifact in %s: %q", tree, args)
	}

	// A stored image whose bytes no longer match their hash (a corrupted
	// store), and one at a URL that nobody serves: failed, with the
	// reason, never booted.
	corrupt := append([]byte("a raw disk image "), byte(os.Getpid()))
	corruptSum := push(corrupt)
	stored := filepath.Join(f.lab.ServerDataDir, server.ArtifactsDir, corruptSum)
	if err := os.Chmod(stored, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stored, []byte("another disk image"), 0o400); err != nil {
		t.Fatal(err)
	}
	bad := func(app, artifact string) string {
		return f.applyOwn(t, []byte(fmt.Sprintf(`apiVersion: corridor/v1
kind: App
name: %s
classes:
  - name: db
    tasks: 1
    guest:
      runtime: vm
      command: [corridor, sample, db, --listen, ":5432"]
      artifact: %s
    resources: {cpu: 100m, memory: 128Mi}
`, app, artifact)))
	}
	wrongName := bad("vmartwrong", fmt.Sprintf("{url: \"corridor://%s\", sha256: %s}", corruptSum, corruptSum))
	goneName := bad("vmartgone", fmt.Sprintf("{url: \"https://127.0.0.1:1/guest.tgz\", sha256: %s}", strings.Repeat("0", 64)))
	waitTasks(t, f.c, wrongName, 1, func(st *api.TaskStatus) bool {
		return st.State == api.TaskFailed && strings.Contains(st.Message, "sha256 mismatch")
	}, "failed: sha256 mismatch")
	waitTasks(t, f.c, goneName, 1, func(st *api.TaskStatus) bool {
		return st.State == api.TaskFailed && strings.Contains(st.Message, "https://127.0.0.1:1/guest.tgz") && strings.Contains(st.Message, "connection refused")
	}, "failed: connection refused")
	for _, app := range []string{wrongName, goneName} {
		ts, err := f.c.ListTasks(ctx, api.Filter{App: app})
		if err != nil || len(ts) != 1 {
			t.Fatalf("%s: %+v, %v", app, ts, err)
		}
		if pid := qemuPIDOrZero(ts[0].ID); pid != 0 {
			t.Errorf("%s: QEMU %d runs for a task whose image could not be had", ts[0].ID, pid)
		}
	}
	for _, s := range f.lab.Servers {
		p := filepath.Join(agent.ArtifactsDir(s.StateDir), "blobs", corruptSum)
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s: a file under the wrong hash was kept: %s", s.Name, p)
		}
	}
	// The good VM still runs.
	waitTasks(t, f.c, name, 2, func(st *api.TaskStatus) bool { return st.State == api.TaskRunning }, "running")
	t.Logf("done %s after the lab was asked for", time.Since(start).Round(time.Millisecond))
}

func hasArgPair(args []string, flag, val string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == val {
			return true
		}
	}
	return false
}

// packDir is the .tar.gz of the image directory dir, packed as
// docs/operations.md tells operators to: `tar -C DIR -czf FILE .` (its
// entries are ./image.json and so on). tar's gzip, not Go's: under the
// race detector compress/flate takes about a minute for the image here.
func packDir(t testing.TB, dir string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "guest.tgz")
	if b, err := exec.Command("tar", "-C", dir, "-czf", out, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar -C %s -czf %s .: %v\n%s", dir, out, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
