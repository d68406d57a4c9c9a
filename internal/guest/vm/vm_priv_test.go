package vm

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/image"
	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// testImage is the guest image built once for the package (with the
// sample app), or why the VM tests skip.
var (
	testImage *image.Image
	skipWhy   string
)

func TestMain(m *testing.M) {
	flag.Parse()
	skipWhy = prepareImage()
	os.Exit(m.Run())
}

// testCache keeps the kernel package and the image across runs.
func testCache() string {
	if d := os.Getenv("CORRIDOR_TEST_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "corridor-test-cache")
}

func prepareImage() string {
	if testing.Short() {
		return "-short: no VM boots"
	}
	if os.Geteuid() != 0 {
		return "needs root (taps, network namespaces)"
	}
	if _, err := exec.LookPath(DefaultQEMU); err != nil {
		return "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
	}
	for _, tool := range []string{"dpkg-deb", "apt-get", "xz", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not installed"
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return "no /dev/net/tun"
	}
	bin := filepath.Join(testCache(), "corridor-static")
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "go env GOMOD: " + err.Error()
	}
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin, "./cmd/corridor")
	build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "vm tests: building the corridor binary failed: %v\n%s", err, out)
		os.Exit(1)
	}
	im, err := image.Build(context.Background(), image.Config{
		Out: filepath.Join(testCache(), "vm-image"), CacheDir: filepath.Join(testCache(), "debs"),
		KernelDeb: os.Getenv("CORRIDOR_TEST_KERNEL_DEB"), WithSample: true, SampleBinary: bin,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "vm tests: image build failed: %v\n", err)
		os.Exit(1)
	}
	testImage = im
	return ""
}

// hostNS is a fresh network namespace standing for the host, with an
// address on lo so that the host has a source address for the guests.
func hostNS(t testing.TB, tag string) string {
	name := testnet.Namespaces(t, "vm", tag)[0]
	testnet.IP(t, "-n", name, "addr", "add", "198.18.0.1/32", "dev", "lo")
	return testnet.Path(name)
}

func newTestRuntime(t testing.TB, nsPath string) *Runtime {
	r, err := New(Config{
		HostNetns: nsPath, StateDir: t.TempDir(), Image: testImage.Dir,
		BootTimeout: 90 * time.Second, BackoffMin: 200 * time.Millisecond, BackoffMax: 2 * time.Second,
		Grace: 15 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	// Runs before Close: a failed test leaves no VM behind.
	t.Cleanup(func() {
		infos, _ := r.List(context.Background())
		for _, in := range infos {
			if err := r.Remove(context.Background(), in.Task); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return r
}

func dbGuest(task, hostIf string, addr netip.Addr) compile.Guest {
	return compile.Guest{
		Task: task, App: "t", Class: "db", Address: addr, HostIf: hostIf,
		Spec:      spec.Guest{Runtime: spec.RuntimeVM, Command: []string{"corridor", "sample", "db", "--listen", ":5432", "--data", "/tmp/db"}},
		Resources: spec.Resources{CPU: 1000, Memory: 256 << 20},
		Env:       map[string]string{"CORRIDOR_TASK": task, "CORRIDOR_ADDR": addr.String()},
	}
}

// waitState polls the task's status until cond holds.
func waitState(t testing.TB, r *Runtime, task string, d time.Duration, cond func(api.TaskStatus) bool) api.TaskStatus {
	t.Helper()
	end := time.Now().Add(d)
	var st api.TaskStatus
	for time.Now().Before(end) {
		st = r.Status(task)
		if cond(st) {
			return st
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("task %s: condition not met in %s; last status %+v", task, d, st)
	return st
}

// ping sends the db tier's PING from inside the host namespace.
func ping(nsPath string, addr netip.Addr) (string, error) {
	var c net.Conn
	err := nsrun.Do(nsPath, func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(addr, 5432).String(), 3*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("PING\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

func pingUntil(t testing.TB, nsPath string, addr netip.Addr, d time.Duration, r *Runtime, task string) string {
	t.Helper()
	end := time.Now().Add(d)
	var err error
	var line string
	for time.Now().Before(end) {
		if line, err = ping(nsPath, addr); err == nil && line != "" && !strings.HasPrefix(line, "ERR") {
			return line
		}
		time.Sleep(200 * time.Millisecond)
	}
	con, _ := os.ReadFile(filepath.Join(r.cfg.StateDir, "t-db-0", "task.log"))
	rt, _ := exec.Command("ip", "-n", filepath.Base(nsPath), "route").CombinedOutput()
	nb, _ := exec.Command("ip", "-n", filepath.Base(nsPath), "neigh").CombinedOutput()
	t.Fatalf("no PING answer from %s in %s: %v %q\nhost routes:\n%s\nhost neighbours:\n%s\nconsole of %s:\n%s", addr, d, err, line, rt, nb, task, con)
	return ""
}

func TestVMLifecycle(t *testing.T) {
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	nsPath := hostNS(t, "life")
	r := newTestRuntime(t, nsPath)
	addr := netip.MustParseAddr("100.64.7.5")
	hostIf := fmt.Sprintf("corvt%d", os.Getpid()%100000)
	g := dbGuest("t/db/0", hostIf, addr)
	ctx := context.Background()
	if err := r.Ensure(ctx, g); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st := waitState(t, r, g.Task, 120*time.Second, func(s api.TaskStatus) bool { return s.State == api.TaskRunning })
	t.Logf("ready in %s, runtime %s (%s)", time.Since(start).Round(time.Millisecond), st.Runtime, accelWhy(r))
	if st.Runtime != "vm-kvm" && st.Runtime != "vm-tcg" {
		t.Fatalf("runtime %q, want vm-kvm or vm-tcg", st.Runtime)
	}
	line := pingUntil(t, nsPath, addr, 30*time.Second, r, g.Task)
	t.Logf("PING -> %q", strings.TrimSpace(line))

	// The host side: a tap with the /32 route and proxy ARP.
	h, err := netlink.NewHandleAt(mustNS(t, nsPath))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(hostIf)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := link.(*netlink.Tuntap); !ok {
		t.Fatalf("%s is a %s, want a tap", hostIf, link.Type())
	}
	infos, err := r.List(ctx)
	if err != nil || len(infos) != 1 || infos[0].PID == 0 || len(infos[0].Missing) != 0 {
		t.Fatalf("List = %+v, %v", infos, err)
	}
	pid := infos[0].PID

	// QEMU runs in the task's cgroup, with the class's CPU limit.
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	if want := "/" + guest.DefaultCgroupParent + "/" + guest.Name(g.Task); !strings.Contains(string(cg), want) {
		t.Errorf("QEMU is not in its cgroup %s:\n%s", want, cg)
	}

	// Ensure again with the same guest changes nothing.
	if err := r.Ensure(ctx, g); err != nil {
		t.Fatal(err)
	}
	if in, _ := r.List(ctx); in[0].PID != pid {
		t.Fatalf("idempotent Ensure restarted QEMU: pid %d -> %d", pid, in[0].PID)
	}

	// Crash: QEMU killed, the supervisor boots it again.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitState(t, r, g.Task, 20*time.Second, func(s api.TaskStatus) bool { return s.Restarts >= 1 })
	st = waitState(t, r, g.Task, 120*time.Second, func(s api.TaskStatus) bool { return s.State == api.TaskRunning })
	pingUntil(t, nsPath, addr, 30*time.Second, r, g.Task)
	infos, _ = r.List(ctx)
	if len(infos) != 1 || infos[0].PID == pid || infos[0].PID == 0 {
		t.Fatalf("after crash List = %+v (old pid %d)", infos, pid)
	}
	pid = infos[0].PID
	log, _ := os.ReadFile(filepath.Join(r.cfg.StateDir, "t-db-0", "task.log"))
	if strings.Count(string(log), image.ReadyLine) < 2 {
		t.Fatalf("console log shows fewer than two boots:\n%s", log)
	}

	// Graceful stop: the power button reaches the guest init, which stops
	// the task and powers off before the grace period ends.
	t0 := time.Now()
	if err := r.Remove(ctx, g.Task); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took >= r.cfg.Grace {
		t.Errorf("Remove took %s: the guest did not power off on system_powerdown (killed after grace)", took)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Fatalf("QEMU %d still runs after Remove", pid)
	}
	if _, err := h.LinkByName(hostIf); err == nil {
		t.Fatalf("tap %s left after Remove", hostIf)
	}
	if _, err := os.Stat(filepath.Join(r.cfg.StateDir, "t-db-0")); !os.IsNotExist(err) {
		t.Fatalf("state dir left after Remove: %v", err)
	}
	if st := r.Status(g.Task); st.State != api.TaskPending {
		t.Fatalf("status after Remove: %+v", st)
	}
}

func mustNS(t testing.TB, path string) netns.NsHandle {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

func TestBadKernel(t *testing.T) {
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	nsPath := hostNS(t, "bad")
	r := newTestRuntime(t, nsPath)
	hostIf := fmt.Sprintf("corvb%d", os.Getpid()%100000)
	g := dbGuest("t/db/1", hostIf, netip.MustParseAddr("100.64.7.6"))

	g.Spec.Kernel = "/nonexistent/vmlinux"
	if err := r.Ensure(context.Background(), g); err == nil || !strings.Contains(err.Error(), "spec.kernel") {
		t.Fatalf("missing kernel: Ensure error %v, want one naming spec.kernel", err)
	}
	// A kernel file QEMU cannot boot: the status carries QEMU's words.
	bad := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(bad, []byte("this is not a kernel\n"), 0o644)
	g.Spec.Kernel = bad
	if err := r.Ensure(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, r, g.Task, 30*time.Second, func(s api.TaskStatus) bool {
		return s.State == api.TaskFailed && strings.Contains(s.Message, "console:")
	})
	t.Logf("status: %s", st.Message)
	if !strings.Contains(strings.ToLower(st.Message), "kernel") {
		t.Fatalf("failure message does not show QEMU's complaint about the kernel: %q", st.Message)
	}
	if err := r.Remove(context.Background(), g.Task); err != nil {
		t.Fatal(err)
	}
}

func accelWhy(r *Runtime) string { _, why := r.Accel(); return why }
