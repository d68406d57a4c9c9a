package image

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestArchiveReadByCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	ar := newArchive()
	ar.file("init", 0o755, []byte("#!/bin/sh\n"))
	ar.file("lib/modules/a.ko", 0o644, []byte("abcde")) // odd size: padding
	ar.symlink("bin/sh", "busybox")
	ar.add(entry{Name: "dev/console", Mode: modeChar | 0o600, RdevMajor: 5, RdevMinor: 1})
	var buf bytes.Buffer
	if err := ar.writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-it", "--quiet")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -it: %v", err)
	}
	got := strings.Fields(string(out))
	want := []string{"bin", "bin/sh", "dev", "dev/console", "init", "lib", "lib/modules", "lib/modules/a.ko"}
	if !slices.Equal(got, want) {
		t.Fatalf("cpio lists %v, want %v", got, want)
	}
	// Extract and compare one file's bytes and the symlink's target.
	dir := t.TempDir()
	cmd = exec.Command("cpio", "-id", "--quiet", "--no-absolute-filenames", "lib/modules/a.ko", "bin/sh")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v: %s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "lib/modules/a.ko")); string(b) != "abcde" {
		t.Fatalf("a.ko = %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "bin/sh")); l != "busybox" {
		t.Fatalf("bin/sh -> %q", l)
	}
	// Same inputs, same bytes.
	var again bytes.Buffer
	if err := ar.writeTo(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Fatal("archive is not deterministic")
	}
}

func TestLoadOrder(t *testing.T) {
	deps := map[string][]string{
		"virtio_net":            {"virtio_ring", "virtio", "net_failover"},
		"net_failover":          {"failover"},
		"failover":              nil,
		"virtio":                {"virtio_ring"},
		"virtio_ring":           nil,
		"virtio_pci":            {"virtio_ring", "virtio", "virtio_pci_modern_dev"},
		"virtio_pci_modern_dev": nil,
		"evdev":                 nil,
	}
	get := func(n string) ([]string, error) {
		d, ok := deps[n]
		if !ok {
			t.Fatalf("asked for unknown module %s", n)
		}
		return d, nil
	}
	order, err := loadOrder([]string{"virtio-net", "virtio_pci", "evdev"}, map[string]bool{}, get)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m]; dup {
			t.Fatalf("%s twice in %v", m, order)
		}
		pos[m] = i
	}
	if len(order) != len(deps) {
		t.Fatalf("order %v has %d modules, want %d", order, len(order), len(deps))
	}
	for m, ds := range deps {
		for _, d := range ds {
			if pos[d] > pos[m] {
				t.Errorf("%s loads before its dependency %s: %v", m, d, order)
			}
		}
	}
	// Built-in modules are skipped with their whole subtree kept only if
	// something else needs it.
	order, err = loadOrder([]string{"net_failover"}, map[string]bool{"failover": true}, get)
	if err != nil || !slices.Equal(order, []string{"net_failover"}) {
		t.Fatalf("with failover built in: %v, %v", order, err)
	}
	deps["failover"] = []string{"net_failover"}
	if _, err := loadOrder([]string{"net_failover"}, nil, get); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("cycle not reported: %v", err)
	}
}

func TestCheckStatic(t *testing.T) {
	if err := StaticELF("/bin/sh"); err == nil {
		// /bin/sh is dash or bash on Debian, dynamically linked.
		if out, _ := exec.Command("file", "-L", "/bin/sh").Output(); !bytes.Contains(out, []byte("static")) {
			t.Fatal("dynamic /bin/sh passed as static")
		}
	}
	if err := StaticELF("/nonexistent"); err == nil {
		t.Fatal("missing file passed")
	}
}

// TestBuild builds a real image (kernel package from apt, or the file in
// CORRIDOR_TEST_KERNEL_DEB), then again to see it cached.
func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips the real image build")
	}
	for _, tool := range []string{"dpkg-deb", "apt-get", "xz"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	if StaticELF(DefaultBusybox) != nil {
		t.Skip("busybox-static not installed")
	}
	out := t.TempDir()
	cfg := Config{Out: out, KernelDeb: os.Getenv("CORRIDOR_TEST_KERNEL_DEB"), CacheDir: testCacheDir()}
	im, err := Build(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if im.Cached {
		t.Fatal("first build reported as cached")
	}
	for _, m := range []string{"virtio_net", "virtio_pci", "failover", "button"} {
		if !slices.Contains(im.Modules, m) {
			t.Errorf("module %s missing from %v", m, im.Modules)
		}
	}
	b, err := os.ReadFile(im.KernelPath())
	if err != nil || !isELF(b) {
		t.Fatalf("kernel is not an ELF vmlinux: %v", err)
	}
	cmd := exec.Command("cpio", "-it", "--quiet")
	f, err := os.Open(im.InitrdPath())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdin = f
	list, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -it: %v", err)
	}
	for _, want := range []string{"init", "bin/busybox", "lib/modules/virtio_net.ko", "lib/modules/order", "dev/console"} {
		if !slices.Contains(strings.Fields(string(list)), want) {
			t.Errorf("initrd lacks %s", want)
		}
	}
	again, err := Build(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cached || again.Hash != im.Hash {
		t.Fatalf("second build: cached=%v hash %s vs %s", again.Cached, again.Hash, im.Hash)
	}
	loaded, err := Load(out)
	if err != nil || loaded.Hash != im.Hash {
		t.Fatalf("Load: %v", err)
	}
}

// testCacheDir keeps downloaded kernel packages across test runs.
func testCacheDir() string {
	if d := os.Getenv("CORRIDOR_TEST_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "corridor-test-cache", "debs")
}
