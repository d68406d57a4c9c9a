package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/corridor-dev/corridor/internal/testnet"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

func TestName(t *testing.T) {
	cases := map[string]string{
		"shop/web/0": "shop-web-0",
		"a1/b2/17":   "a1-b2-17",
		"shop/db/10": "shop-db-10",
	}
	for in, want := range cases {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
	if got := NetnsName("shop/web/0"); got != "cor-shop-web-0" {
		t.Errorf("NetnsName = %q", got)
	}
	// IDs that would collide after replacing '/' by '-' must not.
	ambiguous := []string{"shop/web-x/0", "shop-web/x/0", "shop/web/x/0", "shop/web/x-0", "shop-web-x-0", "shop/web/x0"}
	seen := map[string]string{}
	for _, id := range ambiguous {
		n := Name(id)
		if prev, ok := seen[n]; ok {
			t.Errorf("Name(%q) = Name(%q) = %q", id, prev, n)
		}
		seen[n] = id
	}
	for _, id := range []string{"Shop/Web/0", "a b/c/0", "", "///", "x", strings.Repeat("long", 30) + "/web/0", "ü/ß/0", "../../etc/0"} {
		n := Name(id)
		if len(n) == 0 || len(n) > maxNameLen {
			t.Errorf("Name(%q) = %q: length %d", id, n, len(n))
		}
		for _, r := range n {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				t.Errorf("Name(%q) = %q: bad character %q", id, n, r)
			}
		}
		if strings.HasPrefix(n, "-") || strings.Count(n, "-") < 3 {
			t.Errorf("Name(%q) = %q: hashed names have at least four parts and no leading '-'", id, n)
		}
		if Name(id) != n {
			t.Errorf("Name(%q) is not stable", id)
		}
	}
}

func TestNextBackoff(t *testing.T) {
	lo, hi := 200*time.Millisecond, 30*time.Second
	d := lo
	var seq []time.Duration
	for range 10 {
		seq = append(seq, d)
		d = NextBackoff(d, lo, hi)
	}
	want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond,
		3200 * time.Millisecond, 6400 * time.Millisecond, 12800 * time.Millisecond, 25600 * time.Millisecond, hi, hi}
	if fmt.Sprint(seq) != fmt.Sprint(want) {
		t.Errorf("backoff sequence %v, want %v", seq, want)
	}
	if got := NextBackoff(0, lo, hi); got != lo {
		t.Errorf("NextBackoff(0) = %s, want %s", got, lo)
	}
}

func TestCgroupLimits(t *testing.T) {
	cases := []struct {
		res    spec.Resources
		v1, v2 string
	}{
		{spec.Resources{CPU: 500, Memory: 256 << 20},
			"cpu/cpu.cfs_period_us=100000 cpu/cpu.cfs_quota_us=50000 cpu/cpu.shares=512 memory/memory.limit_in_bytes=268435456",
			"/cpu.max=50000 100000 /cpu.weight=50 /memory.max=268435456"},
		{spec.Resources{CPU: 2000, Memory: 1 << 30},
			"cpu/cpu.cfs_period_us=100000 cpu/cpu.cfs_quota_us=200000 cpu/cpu.shares=2048 memory/memory.limit_in_bytes=1073741824",
			"/cpu.max=200000 100000 /cpu.weight=200 /memory.max=1073741824"},
		{spec.Resources{CPU: 5}, // below the kernel's 1 ms minimum quota
			"cpu/cpu.cfs_period_us=100000 cpu/cpu.cfs_quota_us=1000 cpu/cpu.shares=5 memory/memory.limit_in_bytes=-1",
			"/cpu.max=1000 100000 /cpu.weight=1 /memory.max=max"},
		{spec.Resources{},
			"cpu/cpu.cfs_period_us=100000 cpu/cpu.cfs_quota_us=-1 cpu/cpu.shares=1024 memory/memory.limit_in_bytes=-1",
			"/cpu.max=max 100000 /cpu.weight=100 /memory.max=max"},
	}
	render := func(fs []cgroupFile) string {
		var parts []string
		for _, f := range fs {
			parts = append(parts, f.Ctrl+"/"+f.File+"="+f.Value)
		}
		return strings.Join(parts, " ")
	}
	for _, c := range cases {
		if got := render(v1Limits(c.res, false)); got != c.v1 {
			t.Errorf("v1Limits(%+v) = %s, want %s", c.res, got, c.v1)
		}
		if got := render(v2Limits(c.res, false)); got != c.v2 {
			t.Errorf("v2Limits(%+v) = %s, want %s", c.res, got, c.v2)
		}
	}
	// With the pids controller: the default, and a class's own limit.
	if got := render(v1Limits(spec.Resources{CPU: 100, Memory: 8 << 20}, true)); !strings.HasSuffix(got, " pids/pids.max=1024") {
		t.Errorf("v1Limits with pids = %s, want pids.max=%d last", got, spec.DefaultPids)
	}
	if got := render(v2Limits(spec.Resources{CPU: 100, Memory: 8 << 20, Pids: 64}, true)); !strings.HasSuffix(got, " /pids.max=64") {
		t.Errorf("v2Limits with pids = %s, want pids.max=64 last", got)
	}
}

func TestParseCgroupMounts(t *testing.T) {
	hybrid := `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	unified := `29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
`
	ctrl := map[string]string{
		"/sys/fs/cgroup/unified": "hugetlb\n",
		"/sys/fs/cgroup":         "cpuset cpu io memory hugetlb pids rdma misc\n",
	}
	read := func(dir string) (string, error) {
		c, ok := ctrl[dir]
		if !ok {
			return "", os.ErrNotExist
		}
		return c, nil
	}
	l, err := parseCgroupMounts(strings.NewReader(hybrid), read)
	if err != nil {
		t.Fatal(err)
	}
	if l.Version != cgroupV1 || l.CPURoot != "/sys/fs/cgroup/cpu,cpuacct" || l.MemRoot != "/sys/fs/cgroup/memory" || l.PidsRoot != "/sys/fs/cgroup/pids" {
		t.Errorf("hybrid: got %+v", l)
	}
	l, err = parseCgroupMounts(strings.NewReader(unified), read)
	if err != nil {
		t.Fatal(err)
	}
	if l.Version != cgroupV2 || l.V2Root != "/sys/fs/cgroup" || !l.V2Pids {
		t.Errorf("unified: got %+v", l)
	}
	c := taskCgroup{layout: l, rel: "corridor/shop-web-0"}
	if got := c.dirs(); len(got) != 1 || got[0] != "/sys/fs/cgroup/corridor/shop-web-0" {
		t.Errorf("v2 dirs = %v", got)
	}
	if _, err := parseCgroupMounts(strings.NewReader("41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"), read); err == nil {
		t.Error("no cpu/memory anywhere: want an error")
	}
}

// TestCgroupV2Files writes a v2 task cgroup into a fake hierarchy: the
// controllers are enabled in each ancestor and the limits land in place.
func TestCgroupV2Files(t *testing.T) {
	root := t.TempDir()
	c := taskCgroup{layout: cgroupLayout{Version: cgroupV2, V2Root: root, V2Pids: true}, rel: "corridor/lab1/shop-web-0"}
	if err := c.Ensure(spec.Resources{CPU: 1500, Memory: 128 << 20}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"", "corridor", "corridor/lab1"} {
		b, err := os.ReadFile(filepath.Join(root, d, "cgroup.subtree_control"))
		if err != nil || string(b) != "+cpu +memory +pids" {
			t.Errorf("%s/cgroup.subtree_control = %q, %v", d, b, err)
		}
	}
	for file, want := range map[string]string{"cpu.max": "150000 100000", "cpu.weight": "150", "memory.max": "134217728", "pids.max": "1024"} {
		b, err := os.ReadFile(filepath.Join(root, c.rel, file))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", file, b, err, want)
		}
	}
	// Our cgroups above the task weigh the host's CPUs; the root is not
	// ours to weigh.
	want := strconv.Itoa(100 * runtime.NumCPU())
	for _, d := range []string{"corridor", "corridor/lab1"} {
		if b, err := os.ReadFile(filepath.Join(root, d, "cpu.weight")); err != nil || string(b) != want {
			t.Errorf("%s/cpu.weight = %q, %v; want %s (the host's %d CPUs)", d, b, err, want, runtime.NumCPU())
		}
	}
	if _, err := os.Stat(filepath.Join(root, "cpu.weight")); err == nil {
		t.Errorf("the hierarchy's root was weighed")
	}
}

func writeLog(t *testing.T, dir, task, content string) string {
	t.Helper()
	p := LogPath(dir, task)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTailLog(t *testing.T) {
	dir := t.TempDir()
	var lines []string
	for i := range 5000 { // several read blocks
		lines = append(lines, fmt.Sprintf("line %04d %s", i, strings.Repeat("x", i%50)))
	}
	content := strings.Join(lines, "\n") + "\n"
	writeLog(t, dir, "a/b/0", content)
	for _, n := range []int{1, 3, 1000, 4999} {
		var buf bytes.Buffer
		if err := TailLog(dir, "a/b/0", n, false, &buf); err != nil {
			t.Fatal(err)
		}
		want := strings.Join(lines[len(lines)-n:], "\n") + "\n"
		if buf.String() != want {
			t.Errorf("tail %d: got %d bytes, want %d", n, buf.Len(), len(want))
		}
	}
	for _, n := range []int{-1, 5000, 9999} {
		var buf bytes.Buffer
		if err := TailLog(dir, "a/b/0", n, false, &buf); err != nil || buf.String() != content {
			t.Errorf("tail %d: want the whole log (%v)", n, err)
		}
	}
	// A last line without its newline is still a line.
	writeLog(t, dir, "a/b/1", "one\ntwo\nthree")
	var buf bytes.Buffer
	if err := TailLog(dir, "a/b/1", 2, false, &buf); err != nil || buf.String() != "two\nthree" {
		t.Errorf("unterminated: %q, %v", buf.String(), err)
	}
	if err := TailLog(dir, "no/such/0", 10, false, &buf); err == nil || !strings.Contains(err.Error(), "no/such/0") {
		t.Errorf("missing log: %v", err)
	}
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTailLogFollowAndRotate(t *testing.T) {
	dir := t.TempDir()
	p := writeLog(t, dir, "a/b/0", "old1\nold2\n")
	ctx, cancel := context.WithCancel(context.Background())
	out := &testnet.Buffer{}
	done := make(chan error, 1)
	go func() { done <- TailLogContext(ctx, dir, "a/b/0", 1, true, out) }()
	waitFor(t, "first line", 2*time.Second, func() bool { return out.String() == "old2\n" })

	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintln(f, "new1")
	waitFor(t, "appended line", 2*time.Second, func() bool { return out.String() == "old2\nnew1\n" })

	// Copy-truncate rotation while the writer keeps its O_APPEND file.
	if err := RotateLog(p, 5, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p + ".1"); string(b) != "old1\nold2\nnew1\n" {
		t.Errorf("rotated copy = %q", b)
	}
	fmt.Fprintln(f, "after")
	waitFor(t, "line after copy-truncate", 2*time.Second, func() bool { return strings.HasSuffix(out.String(), "new1\nafter\n") })
	if b, _ := os.ReadFile(p); string(b) != "after\n" {
		t.Errorf("log after copy-truncate = %q", b)
	}

	// Rename rotation (between runs), then a new file.
	if err := RotateLog(p, 1, false); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("fresh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "line of the new file", 2*time.Second, func() bool { return strings.HasSuffix(out.String(), "after\nfresh\n") })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Below the limit nothing moves.
	if err := RotateLog(p, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "fresh\n" {
		t.Errorf("log rotated below its limit: %q", b)
	}
}

// fakeRuntime records calls; it stands in for netns and vm runtimes.
type fakeRuntime struct {
	name    string
	guests  map[string]compile.Guest
	removed []string
}

func (f *fakeRuntime) Ensure(_ context.Context, g compile.Guest) error {
	f.guests[g.Task] = g
	return nil
}
func (f *fakeRuntime) Remove(_ context.Context, task string) error {
	f.removed = append(f.removed, task)
	delete(f.guests, task)
	return nil
}
func (f *fakeRuntime) List(context.Context) ([]Info, error) {
	var out []Info
	for task := range f.guests {
		out = append(out, Info{Task: task, Runtime: f.name})
	}
	return out, nil
}
func (f *fakeRuntime) Status(task string) api.TaskStatus {
	if _, ok := f.guests[task]; ok {
		return api.TaskStatus{Task: task, State: api.TaskRunning, Runtime: f.name}
	}
	return api.TaskStatus{Task: task, State: api.TaskPending}
}

func TestManager(t *testing.T) {
	ctx := context.Background()
	nsr := &fakeRuntime{name: "netns", guests: map[string]compile.Guest{}}
	vmr := &fakeRuntime{name: "vm", guests: map[string]compile.Guest{}}
	m := NewManager()
	m.Register(spec.RuntimeNetns, nsr)
	m.Register(spec.RuntimeVM, vmr)

	g := compile.Guest{Task: "a/b/0", Spec: spec.Guest{Runtime: ""}}
	if err := m.Ensure(ctx, g); err != nil {
		t.Fatal(err)
	}
	if _, ok := nsr.guests["a/b/0"]; !ok {
		t.Fatal("empty runtime did not go to netns")
	}
	if st := m.Status("a/b/0"); st.Runtime != "netns" || st.State != api.TaskRunning {
		t.Errorf("status = %+v", st)
	}
	// Moving a task to another runtime removes it from the first.
	g.Spec.Runtime = spec.RuntimeVM
	if err := m.Ensure(ctx, g); err != nil {
		t.Fatal(err)
	}
	if _, ok := nsr.guests["a/b/0"]; ok {
		t.Error("task still in netns after moving to vm")
	}
	if st := m.Status("a/b/0"); st.Runtime != "vm" {
		t.Errorf("status after move = %+v", st)
	}
	g.Spec.Runtime = "firecracker"
	if err := m.Ensure(ctx, g); !errors.Is(err, ErrUnknownRuntime) || !strings.Contains(err.Error(), "spec.runtime") {
		t.Errorf("unknown runtime: %v", err)
	}
	list, err := m.List(ctx)
	if err != nil || len(list) != 1 || list[0].Runtime != "vm" {
		t.Errorf("list = %+v, %v", list, err)
	}
	if err := m.Remove(ctx, "a/b/0"); err != nil {
		t.Fatal(err)
	}
	if len(vmr.guests) != 0 || len(nsr.removed) != 2 || len(vmr.removed) != 1 {
		t.Errorf("remove: netns removed %v, vm removed %v, vm left %v", nsr.removed, vmr.removed, vmr.guests)
	}
	if st := m.Status("a/b/0"); st.State != api.TaskPending {
		t.Errorf("status after remove = %+v", st)
	}
}

func TestLogHandler(t *testing.T) {
	dir := t.TempDir()
	p := writeLog(t, dir, "shop/web/0", "a\nb\nc\n")
	srv := httptest.NewServer(LogHandler(dir))
	defer srv.Close()
	get := func(query string) (int, string) {
		resp, err := http.Get(srv.URL + "/?" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("task=shop/web/0&lines=2"); code != 200 || body != "b\nc\n" {
		t.Errorf("lines=2: %d %q", code, body)
	}
	if code, body := get("task=shop/web/0"); code != 200 || body != "a\nb\nc\n" {
		t.Errorf("default lines: %d %q", code, body)
	}
	for q, field := range map[string]string{"": "task", "task=shop/web/0&lines=x": "lines", "task=shop/web/0&follow=maybe": "follow"} {
		if code, body := get(q); code != 400 || !strings.HasPrefix(body, field+":") {
			t.Errorf("%q: %d %q, want 400 naming %s", q, code, body, field)
		}
	}
	if code, _ := get("task=shop/web/9"); code != 404 {
		t.Errorf("missing task: %d", code)
	}

	// Follow streams what is appended, flushed as it comes.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/?task=shop/web/0&lines=1&follow=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, "d")
	f.Close()
	got := make([]byte, 4)
	if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != "c\nd\n" {
		t.Errorf("follow: %q, %v", got, err)
	}
}
