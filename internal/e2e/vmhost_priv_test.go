package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/guest/vm"
	"github.com/corridor-dev/corridor/internal/image"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/testnet"
	"github.com/corridor-dev/corridor/internal/verify"
)

// testCacheDir keeps the kernel package, the VM host image and the
// package build across runs ($CORRIDOR_TEST_CACHE).
func testCacheDir() string {
	if d := os.Getenv("CORRIDOR_TEST_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "corridor-test-cache")
}

// buildPackage builds the corridor Debian package as `make dist` does: a
// static binary, then tools/dist (nFPM). It returns the .deb's path.
func buildPackage(t *testing.T) string {
	t.Helper()
	out := t.TempDir()
	// CI's binary (make build, CORRIDOR_BIN) is static already.
	bin := os.Getenv(testnet.BinaryEnv)
	if bin == "" || image.StaticELF(bin) != nil {
		bin = filepath.Join(out, "corridor")
		build := exec.Command("go", "build", "-o", bin, "github.com/corridor-dev/corridor/cmd/corridor")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := build.CombinedOutput(); err != nil {
			t.Fatalf("static build: %v\n%s", err, b)
		}
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "run", ".", "--binary", bin, "--root", root, "--out", out)
	cmd.Dir = filepath.Join(root, "tools", "dist")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("tools/dist: %v\n%s", err, stderr.String())
	}
	return strings.TrimSpace(string(b))
}

// vmHostInputs checks what VM hosts need and gives the package they run
// (built as make dist does), the kernel package and the test cache.
func vmHostInputs(t *testing.T) (deb, kdeb, cache string) {
	t.Helper()
	testnet.NeedRoot(t, "boots VM hosts on a bridge in a namespace")
	if _, err := exec.LookPath(vm.DefaultQEMU); err != nil {
		t.Skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	for _, tool := range []string{"mkfs.ext4", "dpkg", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: scripts/deps.sh installs it", tool)
		}
	}
	built := time.Now()
	deb = buildPackage(t)
	t.Logf("package built in %s: %s", time.Since(built).Round(time.Second), filepath.Base(deb))
	cache = testCacheDir()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	kdeb, _, err := image.FetchKernel(ctx, os.Getenv("CORRIDOR_TEST_KERNEL_DEB"), "", filepath.Join(cache, "debs"))
	if err != nil {
		t.Fatalf("kernel package: %v", err)
	}
	return deb, kdeb, cache
}

// upVMHosts brings up a lab of two VM hosts running the package: s1 with
// kernel WireGuard, s2 with the wireguard module withheld (wireguard-go).
func upVMHosts(t *testing.T) *fleet {
	t.Helper()
	deb, kdeb, cache := vmHostInputs(t)
	corridorBin := testnet.Binary(t, "server")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	pid := os.Getpid()
	opts := lab.Options{
		Dir:         filepath.Join(t.TempDir(), "lab"),
		Servers:     2,
		Prefix:      fmt.Sprintf("corvh%d-", pid%1000),
		Underlay:    netip.MustParsePrefix(fmt.Sprintf("198.19.%d.0/24", 100+pid%150)),
		Binary:      corridorBin,
		JoinTimeout: 10 * time.Minute,
		Hosts:       lab.HostsVM,
		VM: lab.VMOptions{Package: deb, KernelDeb: kdeb, ImageDir: filepath.Join(cache, "vmhost-image"),
			WireGuardGo: []string{"s2"},
			// Status every second: the host-loss step runs the control
			// plane with a 5 s heartbeat timeout.
			AgentConfig: map[string]string{"status-interval": "1s"}},
	}
	start := time.Now()
	l, err := lab.Up(ctx, opts)
	f := &fleet{lab: l}
	t.Cleanup(func() {
		if l == nil {
			return
		}
		if t.Failed() {
			dumpVMLogs(t, l)
		}
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer dcancel()
		if err := lab.Down(dctx, lab.DownOptions{Dir: l.Dir, Binary: corridorBin}); err != nil {
			t.Errorf("lab down: %v", err)
		}
		// The guests lived inside the VMs: the apps' names say nothing
		// about this machine's namespaces (another lab may run a shop).
		assertNothingLeft(t, l)
	})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Logf("figure: lab up of 2 VM hosts (%s), image cached or built, to every agent joined: %s", l.Servers[0].VM.Accel, time.Since(start).Round(time.Second))
	for _, s := range l.Servers {
		if d, ok := agentReady(s.VM.Console, s.VM.ConsoleOffset); ok {
			t.Logf("figure: %s: VM boot (kernel start) to agent ready (joined): %s", s.Name, d)
		}
	}
	if f.c, err = l.Client(); err != nil {
		t.Fatal(err)
	}
	return f
}

// agentReady reads, from a console log after offset off, the guest
// uptime at which the agent logged that it joined or restored its state
// (the agent's log lines carry no uptime: the init's "starting agent ...
// at Ns" line and the agent's own wall-clock time are combined).
func agentReady(console string, off int64) (time.Duration, bool) {
	b, err := os.ReadFile(console)
	if err != nil || off > int64(len(b)) {
		return 0, false
	}
	var startUp float64
	var startWall, readyWall time.Time
	for _, line := range strings.Split(string(b[off:]), "\n") {
		line = strings.TrimRight(line, "\r")
		if rest, ok := strings.CutPrefix(line, "corridor-vmhost: starting agent"); ok && startWall.IsZero() {
			if i := strings.Index(rest, " at "); i >= 0 {
				fmt.Sscanf(rest[i+4:], "%fs", &startUp)
			}
			continue
		}
		if startUp > 0 && startWall.IsZero() && strings.HasPrefix(line, "time=") {
			startWall, _ = time.Parse(time.RFC3339Nano, strings.Fields(strings.TrimPrefix(line, "time="))[0])
		}
		if strings.Contains(line, `msg="joined the cluster"`) || strings.Contains(line, `msg="reconcile done"`) {
			readyWall, _ = time.Parse(time.RFC3339Nano, strings.Fields(strings.TrimPrefix(line, "time="))[0])
			break
		}
	}
	if startUp == 0 || startWall.IsZero() || readyWall.IsZero() {
		return 0, false
	}
	return (time.Duration(startUp*float64(time.Second)) + readyWall.Sub(startWall)).Round(100 * time.Millisecond), true
}

func dumpVMLogs(t *testing.T, l *lab.Lab) {
	for _, f := range []string{filepath.Join(l.Dir, "logs", "server.log"), l.Servers[0].Log, l.Servers[1].Log} {
		b, _ := os.ReadFile(f)
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		t.Logf("---- %s (tail)\n%s", f, b)
	}
}

// TestVMHostsKernelAndUserspaceWireGuard runs the shop on two VM hosts
// booting Debian's kernel and running the corridor package: s1's agent
// takes the kernel's WireGuard, s2 (module withheld) runs wireguard-go,
// and verify proves every pair on the wire, the encrypted pair crossing
// between the two kinds in both directions. Then s1 loses power while
// the control plane is down, and comes back on its own: the agent
// started at boot, its guests and paths restored from the snapshot on
// its state disk. s1 is then off while the app changes, and gets the
// change when back. Last, host loss: the host running the db loses power
// during requests to it, and its tasks move to the other host
// (testVMHostLoss).
func TestVMHostsKernelAndUserspaceWireGuard(t *testing.T) {
	f := upVMHosts(t)
	ctx := context.Background()

	applied := time.Now()
	f.apply(t, examples.Shop)
	// The first WireGuard handshake of the encrypted pair between the two
	// hosts: a kernel device and a wireguard-go one.
	for deadline := time.Now().Add(5 * time.Minute); ; {
		paths, err := f.c.ListPaths(ctx, api.Filter{App: "shop"})
		hs := ""
		for _, p := range paths {
			if err == nil && p.Encrypt && !p.Local && p.HandshakeAge >= 0 {
				hs = p.FromServer + " -> " + p.ToServer
			}
		}
		if hs != "" {
			t.Logf("figure: apply to first WireGuard handshake between the VM hosts (%s, kernel and wireguard-go): %s", hs, time.Since(applied).Round(100*time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no WireGuard handshake between the VM hosts 5m after apply (%v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.settleWithin(t, 5, 5*time.Minute)
	t.Logf("figure: apply to settled (5 tasks running, encrypted paths handshaken): %s", time.Since(applied).Round(100*time.Millisecond))
	rep := f.verifyWithin(t, "shop", 2*time.Minute)

	servers, err := f.c.ListServers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	modes := map[string]string{}
	for _, s := range servers {
		modes[s.Spec.Name] = s.WireGuardMode
	}
	if modes["s1"] != "kernel" || modes["s2"] != "userspace" {
		t.Fatalf("WireGuard kinds %v: want s1 kernel (the VM's own module), s2 userspace (module withheld: wireguard-go)", modes)
	}
	// The encrypted pair (app -> db) crossed between the two kinds, and
	// every check with a capture saw WireGuard, never the marker.
	crossed := map[string]bool{}
	for _, c := range rep.Checks {
		if c.Expect == verify.Encrypted && c.OK && c.FromServer != c.ToServer {
			crossed[c.FromServer+">"+c.ToServer] = true
		}
	}
	if len(crossed) == 0 {
		t.Fatalf("no encrypted check between the VM hosts: %+v", rep.Checks)
	}
	t.Logf("encrypted paths proved on the wire between %v (s1 kernel, s2 wireguard-go)", crossed)

	t.Run("plain flows offloaded, and ended by a policy change", func(t *testing.T) {
		testVMFlowOffload(t, f)
	})

	t.Run("power-cycle with the control plane down", func(t *testing.T) {
		l := f.lab
		if err := l.StopServer(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		if err := l.PowerOff("s1"); err != nil {
			t.Fatal(err)
		}
		on, err := l.PowerOn(ctx, "s1")
		if err != nil {
			t.Fatal(err)
		}
		// Paths up: a request from the outside client enters at s1's
		// published port and goes web -> app (plain) -> db (encrypted),
		// with no control plane to help.
		s1 := l.Server("s1")
		to := netip.AddrPortFrom(s1.Address, 80)
		deadline := time.Now().Add(5 * time.Minute)
		var last string
		for {
			r, err := l.Request(ctx, lab.IngressRequest{From: l.OutsideClient.Allowed, To: to, Path: "/api/summary",
				Marker: []byte("corridor-e2e-reboot"), Timeout: 3 * time.Second})
			if err == nil && r.Connected && strings.Contains(r.Status, "200") {
				var sum struct {
					ServedBy map[string]string `json:"servedBy"`
				}
				if json.Unmarshal([]byte(r.Body), &sum) == nil && sum.ServedBy["db"] != "" {
					break
				}
				last = "answered without the db: " + r.Body
			} else {
				last = fmt.Sprintf("connected %v, %s, %v", r.Connected, r.Status, err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("s1 did not come back with its paths within 5m of power-on: %s", last)
			}
			time.Sleep(time.Second)
		}
		t.Logf("figure: s1 power-on to paths up (request through s1's published port served by web, app and db), control plane down: %s", time.Since(on).Round(100*time.Millisecond))
		if n := countLines(s1.VM.Console, s1.VM.ConsoleOffset, "corridor-vmhost: starting agent"); n == 0 {
			t.Fatal("the init did not start the agent at boot")
		}
		if err := l.StartServer(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
		f.verifyWithin(t, "shop", 3*time.Minute)
	})

	// A host that is off while the app changes gets the change when it is
	// back: the control plane keeps its desired state, the agent started at
	// boot fetches it.
	t.Run("power-cycle while the app changes", func(t *testing.T) {
		l := f.lab
		srv := func() api.Server {
			t.Helper()
			s, err := f.c.GetServer(ctx, "s1")
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		before := srv().DesiredRevision
		if err := l.PowerOff("s1"); err != nil {
			t.Fatal(err)
		}
		// web -> app becomes encrypted: s1 must take new WireGuard peers
		// and rules, and verify proves the pair encrypted on the wire.
		changed := shopWebAppEncrypted(t)
		f.apply(t, changed)
		var missed int64
		for deadline := time.Now().Add(time.Minute); ; {
			if s := srv(); s.DesiredRevision > before {
				missed = s.DesiredRevision
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("s1's desired state did not change with the app (revision %d)", before)
			}
			time.Sleep(200 * time.Millisecond)
		}
		on, err := l.PowerOn(ctx, "s1")
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Minute); ; {
			if s := srv(); s.AppliedRevision >= missed && s.AppliedRevision >= s.DesiredRevision {
				break
			}
			if time.Now().After(deadline) {
				s := srv()
				t.Fatalf("s1 applied revision %d 5m after power-on; it missed %d, desired now %d", s.AppliedRevision, missed, s.DesiredRevision)
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Logf("figure: s1 power-on to the change it missed applied (control plane up): %s", time.Since(on).Round(100*time.Millisecond))
		f.settleWithin(t, 5, 5*time.Minute)
		rep := f.verifyWithin(t, "shop", 3*time.Minute)
		for _, c := range rep.Checks {
			if c.FromClass == "web" && c.ToClass == "app" && c.Port == 8080 && c.FromServer != c.ToServer && c.Expect != verify.Encrypted {
				t.Errorf("web -> app across hosts after the change: expected %s, want encrypted", c.Expect)
			}
		}
	})

	// Last: it restarts the control plane with a short heartbeat timeout,
	// under which the power-offs above would move s1's tasks.
	t.Run("host loss: power off during traffic", func(t *testing.T) {
		testVMHostLoss(t, f)
	})
}

// shopWebAppEncrypted is the shop with its web -> app rule made encrypted.
func shopWebAppEncrypted(t *testing.T) []byte {
	t.Helper()
	changed := bytes.Replace(examples.Shop, []byte("    ports: [8080]\n    encrypt: false"), []byte("    ports: [8080]\n    encrypt: true"), 1)
	if bytes.Equal(changed, examples.Shop) {
		t.Fatal("the shop's web -> app rule is not where the test looks for it")
	}
	return changed
}

// testVMFlowOffload: Debian's kernel has nftables flowtables, so both VM
// hosts offload established plain connections (the web tier's keep-alive
// connections to the app tier, made by requests through s1's published
// port). When web -> app becomes encrypted, the new ruleset ends every
// offloaded flow in its own transaction: no host holds one once it has
// applied the change, while requests go on. The shop is then put back,
// and its plain connections are offloaded again.
func testVMFlowOffload(t *testing.T, f *fleet) {
	ctx := context.Background()
	l := f.lab
	to := netip.AddrPortFrom(l.Server("s1").Address, 80)
	request := func() {
		r, err := l.Request(ctx, lab.IngressRequest{From: l.OutsideClient.Allowed, To: to, Path: "/api/summary", Timeout: 3 * time.Second})
		if err != nil || !r.Connected {
			t.Logf("request through s1's published port: connected %v, %v", r.Connected, err)
		}
	}
	offloaded := func() map[string]int {
		servers, err := f.c.ListServers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, s := range servers {
			if s.FlowOffload != "on" {
				t.Fatalf("server %s: flow offload %q, want on (Debian's kernel has nftables flowtables)", s.Spec.Name, s.FlowOffload)
			}
			for _, e := range s.Errors {
				if strings.Contains(e, "offloaded") {
					t.Fatalf("server %s: %s", s.Spec.Name, e)
				}
			}
			out[s.Spec.Name] = s.OffloadedFlows
		}
		return out
	}
	// until waits, sending requests, for every host's count to pass ok.
	until := func(what string, ok func(int) bool) {
		t.Helper()
		start := time.Now()
		var last map[string]int
		for deadline := start.Add(2 * time.Minute); ; {
			request()
			last = offloaded()
			if ok(last["s1"]) && ok(last["s2"]) {
				t.Logf("figure: %s on both hosts after %s (offloaded flows %v)", what, time.Since(start).Round(100*time.Millisecond), last)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not on both hosts within 2m (offloaded flows %v)", what, last)
			}
			time.Sleep(time.Second)
		}
	}
	applied := func(doc []byte) {
		t.Helper()
		f.apply(t, doc)
		f.settleWithin(t, 5, 5*time.Minute)
	}
	until("plain connections offloaded", func(n int) bool { return n > 0 })

	applied(shopWebAppEncrypted(t))
	// Settled: both hosts applied the change. Its ruleset ended the
	// offloaded flows; nothing plain is left to offload.
	if got := offloaded(); got["s1"] != 0 || got["s2"] != 0 {
		// The kernel clears a flow's conntrack bit from a work queue
		// after the commit: a moment later it must be clear.
		time.Sleep(2 * time.Second)
		if got = offloaded(); got["s1"] != 0 || got["s2"] != 0 {
			t.Fatalf("offloaded flows after web -> app became encrypted: %v, want none", got)
		}
	}
	// Requests now go web -> app encrypted: none of those connections is
	// offloaded (an agent reports one as a fail-closed breach), in a
	// status reported after them (every second here).
	for range 5 {
		request()
	}
	time.Sleep(2 * time.Second)
	if got := offloaded(); got["s1"] != 0 || got["s2"] != 0 {
		t.Fatalf("offloaded flows while requests went web -> app encrypted: %v, want none", got)
	}
	applied(examples.Shop)
	until("plain connections offloaded again after the shop was put back", func(n int) bool { return n > 0 })
}

// settleWithin is settle with a deadline of its own (TCG VM hosts).
func (f *fleet) settleWithin(t testing.TB, want int, d time.Duration) []api.TaskInfo {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		tasks, err := f.c.ListTasks(context.Background(), api.Filter{})
		running := 0
		for _, ti := range tasks {
			if ti.Status != nil && ti.Status.State == api.TaskRunning {
				running++
			}
		}
		if err == nil && running == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d tasks running after %s (%v)", running, want, d, err)
		}
		time.Sleep(time.Second)
	}
	return f.settle(t, want)
}

func countLines(path string, off int64, prefix string) int {
	b, err := os.ReadFile(path)
	if err != nil || off > int64(len(b)) {
		return 0
	}
	n := 0
	for _, l := range strings.Split(string(b[off:]), "\n") {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// TestDemoOnVMHosts runs `corridor demo --hosts vm` as an operator would,
// on two VM hosts running the package (the last one with the wireguard
// module withheld, the demo's default, so one host runs kernel WireGuard
// and the other wireguard-go): it passes verify, the outside client's
// request through a published port is served, and it leaves nothing.
func TestDemoOnVMHosts(t *testing.T) {
	deb, kdeb, cache := vmHostInputs(t)
	pid := os.Getpid()
	prefix := fmt.Sprintf("corvd%d-", pid%1000)
	cmd := exec.Command(testnet.Binary(t, "server", "agent"), "demo", "--hosts", "vm", "--servers", "2",
		"--package", deb, "--kernel-deb", kdeb, "--vm-image-dir", filepath.Join(cache, "vmhost-image"),
		"--prefix", prefix, "--dir", filepath.Join(t.TempDir(), "lab"),
		"--underlay", fmt.Sprintf("198.19.%d.0/24", pid%100), "--timeout", "10m")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("corridor demo --hosts vm: %s\n%s", time.Since(start).Round(100*time.Millisecond), out)
	if err != nil {
		t.Fatalf("corridor demo --hosts vm: %v", err)
	}
	m := regexp.MustCompile(`(?m)^(\d+) of (\d+) checks match the policy$`).FindSubmatch(out)
	if m == nil || string(m[1]) != string(m[2]) || string(m[1]) == "0" {
		t.Errorf("the demo's verify did not pass: %q", m)
	}
	if !bytes.Contains(out, []byte("from the outside client")) || !bytes.Contains(out, []byte("(encrypted)")) {
		t.Errorf("the demo did not show the outside client's request served through the encrypted path")
	}
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("the demo left namespace %s", e.Name())
		}
	}
}
