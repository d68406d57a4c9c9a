package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/artifact"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/image"
	"github.com/corridor-dev/corridor/internal/spec"
)

func sumOf(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// imageTgz is a .tar.gz of an image directory as `corridor image build`
// writes it (a manifest, a kernel, an initramfs), with extra entries.
func imageTgz(t *testing.T, manifest string, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	all := map[string]string{"vmlinux": "\x7fELF a kernel", "initrd.cpio": "070701 an initramfs"}
	if manifest != "" {
		all[image.ManifestFile] = manifest
	}
	for k, v := range files {
		all[k] = v
	}
	for name, body := range all {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

const goodManifest = `{"format": "corridor-image/1", "hash": "x", "kernel": "vmlinux", "initrd": "initrd.cpio"}`

// qcow2Header is the start of a qcow2 (version 3) file naming a backing
// file at backing (0: none) with the given incompatible features.
func qcow2Header(backing, incompatible uint64) []byte {
	h := make([]byte, 112)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint64(h[8:], backing)
	binary.BigEndian.PutUint64(h[72:], incompatible)
	return h
}

func vmGuest(task string, a spec.Artifact) compile.Guest {
	return compile.Guest{Task: task, Spec: spec.Guest{Runtime: spec.RuntimeVM, Command: []string{"corridor", "sample", "web"}, Artifact: a}}
}

func storeArtifact(sum string, archive bool) spec.Artifact {
	return spec.Artifact{URL: "corridor://" + sum, SHA256: sum, Archive: archive}
}

// TestVMArtifactGuests: a VM guest naming its boot image as an artifact is
// handed to the VM runtime with its kernel and initramfs (an image
// archive) or its disk (a single file) in the cache, checked; any
// artifact that cannot be had, or is not a safe image, leaves the task
// failed with the reason and the runtime is never asked to boot it.
func TestVMArtifactGuests(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cache, err := artifact.New(artifact.Config{Dir: t.TempDir(), Logger: quiet, MaxSize: 1 << 20, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	store := fakeStore{}
	push := func(b []byte) string {
		sum := sumOf(b)
		store[sum] = b
		return sum
	}
	cache.SetFetcher(spec.ArtifactScheme, storeFetcher(store))
	cache.SetFetcher("https", func(context.Context, string) (io.ReadCloser, error) {
		return nil, artifact.Permanent(errors.New("dial tcp: connect: network is unreachable"))
	})
	inner := &recordingGuests{}
	g := newArtifactGuests(inner, cache, func() time.Time { return now })
	ctx := context.Background()

	// An image archive: booted from its kernel and initramfs.
	imgSum := push(imageTgz(t, goodManifest, nil))
	if err := g.Ensure(ctx, vmGuest("app-vm-0", storeArtifact(imgSum, true))); err != nil {
		t.Fatal(err)
	}
	tree := cache.TreePath(imgSum)
	if len(inner.ensured) != 1 {
		t.Fatalf("inner runtime got %d guests, want 1", len(inner.ensured))
	}
	got := inner.ensured[0].Spec
	if got.Kernel != filepath.Join(tree, "vmlinux") || got.Initrd != filepath.Join(tree, "initrd.cpio") || got.Image != "" {
		t.Fatalf("boot files: kernel %q initrd %q image %q, want the image in %s", got.Kernel, got.Initrd, got.Image, tree)
	}
	if b, err := os.ReadFile(got.Kernel); err != nil || string(b) != "\x7fELF a kernel" {
		t.Fatalf("kernel in the cache: %q, %v", b, err)
	}
	if got.Command[0] != "corridor" || got.Artifact.SHA256 != imgSum {
		t.Errorf("command or artifact changed: %+v", got)
	}

	// A disk image (raw, and a self-contained qcow2): booted as the disk.
	for _, disk := range [][]byte{[]byte("a raw disk image"), qcow2Header(0, 0)} {
		sum := push(disk)
		inner.ensured = nil
		if err := g.Ensure(ctx, vmGuest("app-disk-0", storeArtifact(sum, false))); err != nil {
			t.Fatal(err)
		}
		if len(inner.ensured) != 1 || inner.ensured[0].Spec.Image != cache.BlobPath(sum) || inner.ensured[0].Spec.Kernel != "" {
			t.Fatalf("disk: inner runtime got %+v, want image %s", inner.ensured, cache.BlobPath(sum))
		}
	}

	// What must fail, and the reason its status gives.
	wrong := strings.Repeat("ab", 32)
	store[wrong] = []byte("not the content of that hash")
	huge := make([]byte, 2<<20)
	hugeSum := push(huge)
	for _, tc := range []struct {
		name string
		a    spec.Artifact
		want string
	}{
		{"wrong hash", storeArtifact(wrong, true), "sha256 mismatch"},
		{"not in the store", storeArtifact(strings.Repeat("cd", 32), true), "not in this server's store"},
		{"unreachable", spec.Artifact{URL: "https://images.example/guest.tgz", SHA256: strings.Repeat("ef", 32)}, "network is unreachable"},
		{"too large", storeArtifact(hugeSum, false), "larger than the agent's limit"},
		{"no manifest", storeArtifact(push(imageTgz(t, "", nil)), true), "not a guest image: no image.json"},
		{"manifest leads out", storeArtifact(push(imageTgz(t, `{"kernel": "../../../../etc/passwd", "initrd": "initrd.cpio"}`, nil)), true), "is not a file name in the image"},
		{"manifest names a link", storeArtifact(push(linkImageTgz(t)), true), "is not a regular file in the image"},
		{"qcow2 with a backing file", storeArtifact(push(append(qcow2Header(200, 0), "/etc/shadow"...)), false), "names a backing file"},
		{"qcow2 with external data", storeArtifact(push(qcow2Header(0, 1<<2)), false), "external file"},
		{"not gzip", storeArtifact(push([]byte("plain bytes")), true), "not a gzip stream"},
	} {
		inner.ensured = nil
		task := "app-bad-" + strings.ReplaceAll(tc.name, " ", "-")
		if err := g.Ensure(ctx, vmGuest(task, tc.a)); err == nil {
			t.Errorf("%s: started", tc.name)
		}
		if len(inner.ensured) != 0 {
			t.Errorf("%s: the VM runtime was asked to boot %+v", tc.name, inner.ensured)
		}
		st := g.Status(task)
		if st.State != api.TaskFailed || st.Runtime != spec.RuntimeVM || !strings.Contains(st.Message, tc.want) {
			t.Errorf("%s: status %+v, want failed with %q", tc.name, st, tc.want)
		}
	}
	// A file under a wrong hash is never kept where it could be booted.
	if _, err := os.Stat(cache.BlobPath(wrong)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("blob of the wrong hash: %v", err)
	}
	if _, err := os.Stat(cache.TreePath(wrong)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tree of the wrong hash: %v", err)
	}
}

// linkImageTgz is an image archive whose kernel is a symbolic link
// (inside the archive, so that unpacking takes it).
func linkImageTgz(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, f := range []struct{ name, body string }{{image.ManifestFile, goodManifest}, {"initrd.cpio", "x"}, {"real", "k"}} {
		tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.body))})
		tw.Write([]byte(f.body))
	}
	tw.WriteHeader(&tar.Header{Name: "vmlinux", Typeflag: tar.TypeSymlink, Linkname: "real"})
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// TestVMImageInUseKept: garbage collection never removes the image of a
// VM the host runs or must run, however long since it was fetched; once
// no guest names it, it goes.
func TestVMImageInUseKept(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	cache, err := artifact.New(artifact.Config{Dir: t.TempDir(), Logger: quiet, UnusedFor: time.Hour, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	store := fakeStore{}
	img := imageTgz(t, goodManifest, nil)
	sum := sumOf(img)
	store[sum] = img
	cache.SetFetcher(spec.ArtifactScheme, storeFetcher(store))
	g := newArtifactGuests(&recordingGuests{}, cache, clock)
	a := &Agent{cfg: Config{Guests: g, Artifacts: cache}}
	ctx := context.Background()
	vmg := vmGuest("app-vm-0", storeArtifact(sum, true))
	if err := g.Ensure(ctx, vmg); err != nil {
		t.Fatal(err)
	}
	// The blob's last use is its modification time: make it old.
	old := now.Add(-3 * time.Hour)
	if err := os.Chtimes(cache.BlobPath(sum), old, old); err != nil {
		t.Fatal(err)
	}
	// Given to the runtime: kept.
	if removed, err := cache.Prune(a.artifactsInUse()); err != nil || len(removed) != 0 {
		t.Fatalf("pruned %v (%v) while its VM runs", removed, err)
	}
	// Named by the desired state only (an agent restarted, its VM not
	// ensured yet): kept.
	g.Remove(ctx, vmg.Task)
	a.target = &api.DesiredState{State: hoststate.State{Guests: []hoststate.Guest{vmg}}}
	if removed, err := cache.Prune(a.artifactsInUse()); err != nil || len(removed) != 0 {
		t.Fatalf("pruned %v (%v) while the desired state names it", removed, err)
	}
	// Named by nothing: removed, tree and all.
	a.target = &api.DesiredState{}
	if removed, err := cache.Prune(a.artifactsInUse()); err != nil || len(removed) != 1 {
		t.Fatalf("pruned %v (%v), want the unused image", removed, err)
	}
	if _, err := os.Stat(cache.TreePath(sum)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tree left: %v", err)
	}
}
