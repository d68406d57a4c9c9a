package nsrun

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDoEmptyPathRunsInPlace(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, inside unix.Stat_t
	if err := unix.Stat(ownNetns, &before); err != nil {
		t.Fatal(err)
	}
	tid := unix.Gettid()
	ran := false
	if err := Do("", func() error {
		ran = true
		if unix.Gettid() != tid {
			t.Error("fn moved off the caller's locked thread")
		}
		return unix.Stat(ownNetns, &inside)
	}); err != nil {
		t.Fatal(err)
	}
	if !ran || inside.Ino != before.Ino {
		t.Fatalf("ran %v in namespace %d, want the caller's %d", ran, inside.Ino, before.Ino)
	}
}

func TestErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-netns")
	err := Do(missing, func() error { t.Error("fn ran"); return nil })
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Do(missing): %v, want an error naming %s", err, missing)
	}
	notNS := filepath.Join(t.TempDir(), "plain-file")
	if err := os.WriteFile(notNS, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Do(notNS, func() error { t.Error("fn ran"); return nil }); err == nil || !strings.Contains(err.Error(), "enter netns") {
		t.Fatalf("Do(plain file): %v, want an enter error", err)
	}
	want := errors.New("from fn")
	if os.Geteuid() == 0 {
		if err := DoNew(func() error { return want }); !errors.Is(err, want) {
			t.Fatalf("DoNew: %v, want fn's error", err)
		}
	}
	if err := Run(func() error { return want }); !errors.Is(err, want) {
		t.Fatalf("Run: %v, want fn's error", err)
	}
}
