package vm

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

func qcow2(backing, incompatible uint64) []byte {
	h := make([]byte, 112)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint64(h[8:], backing)
	binary.BigEndian.PutUint64(h[72:], incompatible)
	return h
}

// TestDiskFormat: a delivered disk is named by its hash, so its format is
// read from its content; a qcow2 that would make QEMU open host files is
// refused.
func TestDiskFormat(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o444); err != nil {
			t.Fatal(err)
		}
		return p
	}
	raw := write("0123abcd", []byte("raw sectors"))
	q := write("4567cdef", qcow2(0, 0))
	named := write("disk.qcow2", []byte("whatever"))
	for p, want := range map[string]string{raw: "raw", q: "qcow2", named: "qcow2"} {
		if got := diskFormat(p); got != want {
			t.Errorf("%s: format %s, want %s", p, got, want)
		}
	}
	for _, p := range []string{raw, q, write("empty", nil)} {
		if err := CheckDeliveredDisk(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	for name, b := range map[string][]byte{
		"backing":  qcow2(112, 0),
		"external": qcow2(0, 1<<2),
		"short":    []byte("QFI\xfb\x00\x00"),
	} {
		if err := CheckDeliveredDisk(write(name, b)); err == nil || !strings.Contains(err.Error(), "unsafe disk image") {
			t.Errorf("%s: %v, want refused", name, err)
		}
	}
}

// TestUnresolvedArtifactRefused: a guest naming an artifact that nobody
// resolved into boot files is not booted from the default image.
func TestUnresolvedArtifactRefused(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	g := compile.Guest{Task: "a-b-0", Address: netip.MustParseAddr("100.64.0.2"), HostIf: "corg0",
		Spec: spec.Guest{Runtime: spec.RuntimeVM, Command: []string{"x"}, Artifact: spec.Artifact{URL: "corridor://" + sum, SHA256: sum}}}
	if err := validate(g); err == nil || !strings.Contains(err.Error(), "not resolved") {
		t.Fatalf("validate: %v", err)
	}
	g.Spec.Image = "/var/cache/corridor/artifacts/blobs/" + sum
	if err := validate(g); err != nil {
		t.Fatalf("resolved: %v", err)
	}
}
