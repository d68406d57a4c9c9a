package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/guest/vm"
	"github.com/corridor-dev/corridor/internal/image"
	"github.com/corridor-dev/corridor/internal/testnet"
	"github.com/corridor-dev/corridor/internal/verify"
)

// vmImage builds (or finds in the shared test cache) the guest image with
// the sample app, or skips when the machine truly lacks what VMs need.
func vmImage(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath(vm.DefaultQEMU); err != nil {
		t.Skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	cache := os.Getenv("CORRIDOR_TEST_CACHE")
	if cache == "" {
		cache = filepath.Join(os.TempDir(), "corridor-test-cache")
	}
	bin := filepath.Join(cache, "corridor-static-e2e")
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin, "github.com/corridor-dev/corridor/cmd/corridor")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	im, err := image.Build(ctx, image.Config{
		Out: filepath.Join(cache, "vm-image-e2e"), CacheDir: filepath.Join(cache, "debs"),
		KernelDeb: os.Getenv("CORRIDOR_TEST_KERNEL_DEB"), WithSample: true, SampleBinary: bin,
	})
	if err != nil {
		t.Fatalf("guest image: %v", err)
	}
	return im.Dir
}

// TestShopWithVMDatabase runs the shop with its db tier in a QEMU VM beside
// netns guests: the hosts encrypt app -> db with no plaintext on the
// underlay, a crashed VM comes back with its paths, and deleting the app
// removes the VM and its tap.
func TestShopWithVMDatabase(t *testing.T) {
	testnet.NeedRoot(t, "boots VMs in a lab")
	img := vmImage(t)
	f := upFleetWith(t, "--vm-image", img)

	f.apply(t, examples.ShopVM)
	tasks := f.settle(t, 5)
	var db compile.Task
	for _, ti := range tasks {
		if ti.ID == "shopvm/db/0" {
			db = ti.Task
			if !strings.HasPrefix(ti.Status.Runtime, "vm-") {
				t.Fatalf("db runs as %q, want a VM", ti.Status.Runtime)
			}
		}
	}
	// "running" means the VM booted; the db service inside may take a
	// moment more to listen under TCG on a busy machine.
	rep := f.verifyWithin(t, "shopvm", 60*time.Second)
	encrypted := 0
	for _, c := range rep.Checks {
		if c.ToClass == "db" && c.Expect == verify.Encrypted && c.OK {
			encrypted++
		}
	}
	if encrypted == 0 {
		t.Fatalf("no encrypted path to the VM was proved: %+v", rep.Checks)
	}
	// The VM's own probes run inside it (probe-responder on its probe
	// port): none incomplete, and the db reaches nothing, as the policy says.
	fromVM := 0
	for _, c := range rep.Checks {
		if c.FromClass != "db" {
			continue
		}
		fromVM++
		if c.Observed == verify.Incomplete || c.Expect != verify.Denied || !c.OK {
			t.Errorf("check from the VM %s -> %s %s/%d: expected %s, observed %s (%s)", c.FromTask, c.ToTask, c.Protocol, c.Port, c.Expect, c.Observed, c.Detail)
		}
	}
	if fromVM == 0 || rep.Incomplete != 0 {
		t.Fatalf("%d checks from the VM, %d incomplete", fromVM, rep.Incomplete)
	}
	// And a probe that must connect from inside the VM: to its own
	// db port, which only a process inside the guest can reach this way.
	res, err := f.c.Probe(context.Background(), db.Server, api.ProbeRequest{FromTask: db.ID, ToAddr: db.Address.String(),
		Network: "tcp", Port: 5432, Marker: []byte("corridor-e2e-from-the-vm"), Timeout: 5 * time.Second})
	if err != nil || !res.Connected || res.Skipped != "" {
		t.Fatalf("probe from inside the VM to its own db port: %+v, %v", res, err)
	}

	t.Run("crash", func(t *testing.T) {
		pid := qemuPID(t, db.ID)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			ti, err := f.c.ListTasks(context.Background(), api.Filter{Task: db.ID})
			if err == nil && len(ti) == 1 && ti[0].Status != nil && ti[0].Status.State == api.TaskRunning && ti[0].Status.Restarts > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the VM was not restarted: %+v", ti)
			}
			time.Sleep(500 * time.Millisecond)
		}
		f.verifyWithin(t, "shopvm", 40*time.Second)
	})

	t.Run("delete", func(t *testing.T) {
		if err := f.c.DeleteApp(context.Background(), "shopvm"); err != nil {
			t.Fatal(err)
		}
		f.settle(t, 0)
		deadline := time.Now().Add(30 * time.Second)
		for qemuPIDOrZero(db.ID) != 0 {
			if time.Now().After(deadline) {
				t.Fatal("QEMU still runs after the app was deleted")
			}
			time.Sleep(200 * time.Millisecond)
		}
		srv := f.lab.Server(db.Server)
		h := testnet.Netlink(t, srv.Namespace)
		if _, err := h.LinkByName(compile.HostIf(db.ID)); err == nil {
			t.Errorf("tap %s of the deleted VM is still on %s", compile.HostIf(db.ID), srv.Name)
		}
	})
}

// qemuPID finds the QEMU process of a task by its command line.
func qemuPID(t *testing.T, task string) int {
	t.Helper()
	if pid := qemuPIDOrZero(task); pid != 0 {
		return pid
	}
	t.Fatalf("no QEMU process for %s", task)
	return 0
}

func qemuPIDOrZero(task string) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		cmd := string(b)
		if strings.Contains(cmd, "qemu-system") && strings.Contains(cmd, compile.HostIf(task)) {
			var pid int
			fmt.Sscanf(filepath.Base(filepath.Dir(p)), "%d", &pid)
			return pid
		}
	}
	return 0
}
