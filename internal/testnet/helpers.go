package testnet

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
)

// Buffer is a bytes.Buffer that a child process's output (or a follower
// goroutine) writes while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *Buffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// String is what was written so far.
func (w *Buffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// CopyExecutable copies the executable from to the path to (mode 0755).
// A test that runs a copy at a path of its own can tell its leftover
// processes from everyone else's (ProcessesOf).
func CopyExecutable(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// ProcessesOf lists the PIDs of the processes running the executable exe.
func ProcessesOf(exe string) []int {
	var pids []int
	links, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range links {
		if target, err := os.Readlink(p); err == nil && target == exe {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// CorridorCgroups lists the cgroup directories at and under a "corridor"
// parent, in every hierarchy mounted under /sys/fs/cgroup (v1 and v2): a
// test compares the lists before and after to find what it left.
func CorridorCgroups() map[string]bool {
	out := map[string]bool{}
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/corridor")
	more, _ := filepath.Glob("/sys/fs/cgroup/corridor")
	for _, r := range append(roots, more...) {
		_ = filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				out[p] = true
			}
			return nil
		})
	}
	return out
}
