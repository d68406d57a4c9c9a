package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/dataplane"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/mountinfo"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// `corridor agent --cleanup --state-dir DIR`, without --wg-name, removes
// the WireGuard device the agent made under its own name, the device's
// wireguard-go process and the empty cgroup parent directories in every
// hierarchy (v1 and v2), whether it runs under nsenter or ip netns exec.
func TestCleanupWithoutFlagsRemovesDeviceProcessAndCgroups(t *testing.T) {
	testnet.NeedRoot(t, "network namespaces, a WireGuard device and cgroups")
	bin := testnet.Binary(t, "agent", "datapath wireguard")
	for _, launcher := range []string{"nsenter", "ip netns exec"} {
		t.Run(strings.ReplaceAll(launcher, " ", "-"), func(t *testing.T) {
			name := testnet.Namespaces(t, "cl", "h")[0]
			h := testnet.Netlink(t, name)
			addVeth(t, h, "eth0", "eth0p", "198.18.77.1/24")
			dir := t.TempDir()
			sfx := randHex(t)
			wg := "corw-c" + sfx
			parent := "corridor-cleantest-" + sfx

			// What a run of the agent leaves: its record, a userspace
			// WireGuard device served by a datapath process, and the
			// cgroup parent in every hierarchy (its tasks' cgroups gone).
			if err := agent.SaveHostRecord(dir, agent.HostRecord{WireGuardName: wg, Underlay: "eth0", CgroupParent: parent}); err != nil {
				t.Fatal(err)
			}
			dp, err := dataplane.New(dataplane.Config{
				NetNS: testnet.Path(name), Underlay: "eth0", StateDir: dir,
				WireGuardName: wg, Userspace: true, Binary: bin,
			})
			if err != nil {
				t.Fatal(err)
			}
			err = dp.Apply(context.Background(), compile.HostState{
				Host: "s1", Address: netip.MustParseAddr("198.18.77.1"), VTEPMAC: "02:c0:00:00:77:01", WireGuardPort: 51820,
			})
			dp.Close()
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			if _, err := h.LinkByName(wg); err != nil {
				t.Fatalf("%s not made: %v", wg, err)
			}
			pid := datapathPID(t, wg)
			if pid == 0 {
				t.Fatalf("no datapath process serves %s", wg)
			}
			t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
			dirs := makeCgroupParent(t, parent)

			args := append(strings.Fields(launcher), "--net="+testnet.Path(name))
			if launcher == "ip netns exec" {
				args = []string{"ip", "netns", "exec", name}
			}
			args = append(args, bin, "agent", "--cleanup", "--state-dir", dir)
			var out bytes.Buffer
			cmd := exec.Command(args[0], args[1:]...)
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out.String())
			}
			if _, err := h.LinkByName(wg); err == nil {
				t.Errorf("device %s is still there after cleanup:\n%s", wg, out.String())
			}
			if _, err := h.LinkByName(dataplane.VXLANName); err == nil {
				t.Errorf("device %s is still there after cleanup", dataplane.VXLANName)
			}
			deadline := time.Now().Add(3 * time.Second)
			for alive(pid) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if alive(pid) {
				t.Errorf("datapath process %d still runs after cleanup", pid)
			}
			for _, d := range dirs {
				if _, err := os.Stat(d); err == nil {
					t.Errorf("cgroup directory %s is still there after cleanup", d)
				}
			}
		})
	}
}

func randHex(t *testing.T) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// datapathPID finds the wireguard-go process serving dev.
func datapathPID(t *testing.T, dev string) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) > 3 && args[1] == "datapath" && strings.Contains(strings.Join(args, " "), "--name "+dev) {
			return pid
		}
	}
	return 0
}

// alive reports whether pid runs (a zombie counts as gone).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

// makeCgroupParent makes parent in every cgroup hierarchy mounted here
// that has controllers (v1 and v2), as the guests' cgroups leave it, and
// removes it again when the test ends, if still there.
func makeCgroupParent(t *testing.T, parent string) []string {
	t.Helper()
	mounts, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, m := range mounts {
		if m.FSType != "cgroup" && m.FSType != "cgroup2" || slices.ContainsFunc(m.Super, func(o string) bool { return strings.HasPrefix(o, "name=") }) {
			continue // a named v1 hierarchy (systemd's) holds no task cgroups
		}
		d := filepath.Join(m.Point, parent)
		if err := os.Mkdir(d, 0o755); err != nil {
			continue // read-only or the same hierarchy twice
		}
		dirs = append(dirs, d)
		t.Cleanup(func() { os.Remove(d) })
	}
	if len(dirs) == 0 {
		t.Fatal("no cgroup hierarchy to make a parent in")
	}
	if got, err := guest.CgroupParentDirs(parent); err != nil || len(got) != len(dirs) {
		t.Fatalf("CgroupParentDirs = %v, %v; want %v", got, err, dirs)
	}
	return dirs
}
