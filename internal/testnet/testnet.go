// Package testnet holds the helpers that privileged tests share: it skips
// a test, saying why, when the machine cannot run it (NeedRoot); makes
// named network namespaces that are removed when the test ends
// (Namespaces, Path, IP, Netlink); and gives tests the corridor binary,
// built once per test process (Binary, with Main in TestMain), failing the
// test, never skipping it, when that binary cannot be built or run.
//
// Privileged tests live in files named *_priv_test.go. Only _test.go files
// import this package.
package testnet

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var seq atomic.Int32

// NeedRoot skips t under -short, or when not root; why says what the test
// makes (namespaces, links, cgroups...).
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if testing.Short() {
		t.Skip("privileged: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + why)
	}
}

// Namespaces makes len(roles) named network namespaces, unique to this
// test process ("cortst-<tag>-<pid>-<n>-<role>"), with lo up, removed when
// the test ends. It returns their names in the order of roles.
func Namespaces(t testing.TB, tag string, roles ...string) []string {
	t.Helper()
	NeedRoot(t, "creates network namespaces")
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip to build the test namespaces")
	}
	n := seq.Add(1)
	names := make([]string, len(roles))
	for i, r := range roles {
		name := fmt.Sprintf("cortst-%s-%d-%d-%s", tag, os.Getpid(), n, r)
		IP(t, "netns", "add", name)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
		IP(t, "-n", name, "link", "set", "lo", "up")
		names[i] = name
	}
	return names
}

// Path is where a namespace made by Namespaces is mounted.
// It is hostns.Path, spelled out because nsrun's tests use testnet and
// hostns uses nsrun (an import would be a cycle).
func Path(name string) string { return filepath.Join("/run/netns", name) }

// IP runs iproute2's ip and fails the test on error.
func IP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Netlink is a netlink handle in the named network namespace, closed (with
// the namespace handle) when the test ends.
func Netlink(t testing.TB, name string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open network namespace %s: %v", name, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	t.Cleanup(func() {
		h.Close()
		ns.Close()
	})
	return h
}

// BinaryEnv names the environment variable that gives tests a corridor
// binary already built (make test sets it); unset, Binary builds one.
const BinaryEnv = "CORRIDOR_BIN"

var (
	mainRan atomic.Bool
	bin     struct {
		once sync.Once
		dir  string // made by Binary, removed by Main
		path string
		err  error
	}
)

// Main runs the tests of m and then removes the binary that Binary built,
// if any; it returns m's exit code. A package whose tests call Binary has
//
//	func TestMain(m *testing.M) { os.Exit(testnet.Main(m)) }
func Main(m *testing.M) int {
	mainRan.Store(true)
	code := m.Run()
	if bin.dir != "" {
		os.RemoveAll(bin.dir)
	}
	return code
}

// Binary is the corridor binary for tests that start it: $CORRIDOR_BIN
// when set, else cmd/corridor built once per test process. It checks that
// the binary runs ("corridor --help", and "corridor CMD --help" for each
// of commands). A binary that cannot be built, is missing or does not run
// fails t: a broken binary is a failure, never a skip. Privileged tests
// call NeedRoot first; Binary itself needs no root.
func Binary(t testing.TB, commands ...string) string {
	t.Helper()
	bin.once.Do(func() {
		if b := os.Getenv(BinaryEnv); b != "" {
			bin.path, bin.err = filepath.Abs(b)
			return
		}
		if !mainRan.Load() {
			bin.err = fmt.Errorf("testnet.Binary builds cmd/corridor and needs testnet.Main to remove it: add func TestMain(m *testing.M) { os.Exit(testnet.Main(m)) } (or set %s)", BinaryEnv)
			return
		}
		dir, err := os.MkdirTemp("", "cortst-bin-")
		if err != nil {
			bin.err = err
			return
		}
		bin.dir, bin.path = dir, filepath.Join(dir, "corridor")
		out, err := exec.Command("go", "build", "-o", bin.path, "github.com/corridor-dev/corridor/cmd/corridor").CombinedOutput()
		if err != nil {
			bin.err = fmt.Errorf("go build ./cmd/corridor: %w\n%s", err, out)
		}
	})
	if bin.err != nil {
		t.Fatalf("corridor binary: %v", bin.err)
	}
	if err := runs(bin.path, commands); err != nil {
		t.Fatal(err)
	}
	return bin.path
}

// runs checks that the binary at path answers --help, for itself and for
// each of commands.
func runs(path string, commands []string) error {
	for _, args := range append([][]string{{"--help"}}, helpArgs(commands)...) {
		if out, err := exec.Command(path, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("corridor binary %s does not run `corridor %s`: %w\n%s", path, strings.Join(args, " "), err, out)
		}
	}
	return nil
}

func helpArgs(commands []string) [][]string {
	var out [][]string
	for _, c := range commands {
		out = append(out, append(strings.Fields(c), "--help"))
	}
	return out
}
