package testnet

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// brokenBin is what $CORRIDOR_BIN names in this package's tests: a
// "corridor" that answers --help but whose agent command fails.
var brokenBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cortst-testnet-")
	if err != nil {
		panic(err)
	}
	brokenBin = filepath.Join(dir, "corridor")
	script := "#!/bin/sh\ncase \"$1\" in agent) echo 'agent: broken' >&2; exit 3;; esac\nexit 0\n"
	if err := os.WriteFile(brokenBin, []byte(script), 0o755); err != nil {
		panic(err)
	}
	os.Setenv(BinaryEnv, brokenBin)
	code := Main(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// fatalTB records a Fatal and ends the goroutine as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	runtime.Goexit()
}
func (f *fatalTB) Fatalf(format string, args ...any) { f.Fatal(fmt.Sprintf(format, args...)) }

// call runs Binary with a recording TB and returns its path, or the
// message it failed with.
func call(t *testing.T, commands ...string) (path, failed string) {
	f := &fatalTB{TB: t}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		path = Binary(f, commands...)
	}()
	wg.Wait()
	return path, f.msg
}

// A binary that runs is returned; one that does not run a command asked
// for fails the test, naming the command: a broken binary is never a skip.
func TestBinary(t *testing.T) {
	path, failed := call(t, "server")
	if failed != "" || path != brokenBin {
		t.Fatalf("Binary(server) = %q, failed %q; want %s", path, failed, brokenBin)
	}
	path, failed = call(t, "server", "agent")
	if path != "" || !strings.Contains(failed, "corridor agent --help") || !strings.Contains(failed, "agent: broken") {
		t.Fatalf("Binary(server, agent) = %q, failed %q; want a failure naming `corridor agent --help`", path, failed)
	}
}

func TestRunsMissingBinary(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "corridor")
	if err := runs(missing, nil); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("runs(missing) = %v, want an error naming %s", err, missing)
	}
}
