package lab

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/corridor-dev/corridor/internal/testnet"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// TestFreshMachineTwice is a new user's first two runs: on a machine where
// /run/netns is a plain directory (or missing) rather than a mount point,
// `corridor demo` twice, then `lab up`, `apply`, `lab down` twice. Each run
// must succeed without printing an error and leave nothing behind:
// namespaces, mounts, links, cgroups, processes, nftables tables.
//
// The fresh machine is simulated without disturbing the real one: the
// commands run in a private mount namespace with a new tmpfs on /run.
// Kernel objects are machine-wide, so leftovers are also checked from
// outside.
func TestFreshMachineTwice(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("-short: runs the demo twice")
	}
	// A copy of the binary at a path of the test's own, so that any
	// process of it still alive at the end is this test's leftover.
	bin := filepath.Join(t.TempDir(), "corridor")
	testnet.CopyExecutable(t, corridorBinary(t), bin)
	dir := t.TempDir()
	spec, err := filepath.Abs("../../examples/shop.yaml")
	if err != nil {
		t.Fatal(err)
	}

	cgroupsBefore := testnet.CorridorCgroups()
	script := `set -u
mount -t tmpfs corfresh /run || exit 90
for round in 1 2; do
	echo "== demo, run $round"
	"$BIN" demo --dir "$DIR/demo" || exit 1
	left=$(ls -A /run/netns 2>/dev/null); [ -z "$left" ] || { echo "left in /run/netns: $left"; exit 2; }
done
for round in 1 2; do
	echo "== lab up, apply, lab down, run $round"
	env=$("$BIN" lab up --dir "$DIR/lab" -o env) || exit 3
	eval "$env"
	"$BIN" apply -f "$SPEC" || exit 4
	"$BIN" lab down --dir "$DIR/lab" || exit 5
	left=$(ls -A /run/netns 2>/dev/null); [ -z "$left" ] || { echo "left in /run/netns: $left"; exit 6; }
done
grep -w nsfs /proc/self/mountinfo && exit 7
echo "== lab down with nothing left"
"$BIN" lab down --dir "$DIR/lab" 2>&1 || exit 8
exit 0
`
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Env = append(os.Environ(), "BIN="+bin, "DIR="+dir, "SPEC="+spec, "CORRIDOR_LAB_DIR=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	t.Logf("output:\n%s", out.String())
	if runErr != nil {
		t.Fatalf("fresh-machine runs failed: %v", runErr)
	}
	// The demo and the lab talk on stderr; nothing they print may be an
	// error or a failed removal.
	bad := regexp.MustCompile(`(?i)level=error|device or resource busy|already exists|still present`)
	for _, line := range strings.Split(out.String(), "\n") {
		if bad.MatchString(line) {
			t.Errorf("printed: %s", line)
		}
	}

	// From outside: what is machine-wide must be gone too.
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "corlab") {
			t.Errorf("link %s left in the root namespace", l.Attrs().Name)
		}
	}
	tables, err := (&nftables.Conn{}).ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == "corridor" {
			t.Errorf("nftables table %s left in the root namespace", tb.Name)
		}
	}
	for c := range testnet.CorridorCgroups() {
		if !cgroupsBefore[c] {
			t.Errorf("cgroup %s left behind", c)
		}
	}
	for _, pid := range testnet.ProcessesOf(bin) {
		t.Errorf("process %d of the test's binary still running", pid)
	}
}
