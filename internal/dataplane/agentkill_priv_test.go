package dataplane

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
)

// helperAgentEnv names the file that makes TestHelperAgent act as a host's
// agent (as far as the data plane goes) in a process of its own, so that a
// test can kill it with SIGKILL.
const helperAgentEnv = "CORRIDOR_TEST_HELPER_AGENT"

type helperAgentSpec struct {
	Config Config            `json:"config"`
	State  compile.HostState `json:"state"`
	Ready  string            `json:"ready"`
}

// TestHelperAgent is not a test: run by startHelperAgent, it opens the data
// plane, applies the state, writes the ready file and watches until killed.
func TestHelperAgent(t *testing.T) {
	path := os.Getenv(helperAgentEnv)
	if path == "" {
		t.Skip("helper process for testAgentKill")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var spec helperAgentSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	spec.Config.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	dp, err := New(spec.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := dp.Apply(ctx, spec.State); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(spec.Ready, []byte(strings.Join(dp.LastChanges(), "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dp.Watch(ctx, nil)
}

// startHelperAgent runs h's data plane in a helper process with st and
// waits until it applied it; it returns the process and what that first
// Apply changed.
func startHelperAgent(t *testing.T, h *host, st compile.HostState) (*exec.Cmd, string) {
	t.Helper()
	dir := t.TempDir()
	spec := helperAgentSpec{
		Config: Config{NetNS: h.nsPath, StateDir: h.stateDir, WireGuardName: h.wgName, Binary: h.dp.cfg.Binary, Userspace: !h.kernel},
		State:  st,
		Ready:  filepath.Join(dir, "ready"),
	}
	b, _ := json.Marshal(spec)
	sf := filepath.Join(dir, "spec.json")
	if err := os.WriteFile(sf, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAgent$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperAgentEnv+"="+sf)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for range 500 {
		if b, err := os.ReadFile(spec.Ready); err == nil {
			return cmd, strings.TrimSpace(string(b))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("helper agent not ready in 10 s")
	return nil, ""
}

// wgShow is `wg show <dev> dump` without the columns that move with
// traffic (latest handshake, bytes).
func wgShow(t *testing.T, h *host) string {
	t.Helper()
	out := run(t, "ip", "netns", "exec", h.name, "wg", "show", h.wgName, "dump")
	var lines []string
	for i, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Split(l, "\t")
		if i > 0 && len(f) == 8 {
			f = append(f[:4], f[7]) // key, psk, endpoint, allowed IPs, keepalive
		}
		lines = append(lines, strings.Join(f, "\t"))
	}
	return strings.Join(lines, "\n")
}

// testAgentKill: A's data plane runs in its own process (as the agent's);
// it is killed with SIGKILL during two sequence-numbered streams, one on
// the encrypted pair (a1 -> b1) and one on the plain pair (a2 -> b1), and
// started again: nothing is lost, nothing changes (`wg show` the same, no
// kernel change made by the restart), the datapath process is the same.
func testAgentKill(t *testing.T, s *scenario, stA, stB compile.HostState) {
	ctx := context.Background()
	sa, _, restore := s.applyStream(t, stA, stB)
	defer restore()
	pid := s.a.dp.datapathPID()
	wgBefore := wgShow(t, s.a)
	agent, _ := startHelperAgent(t, s.a, sa)
	enc := startStreamTo(t, s.a1, s.b1, portStream, 2*time.Millisecond)
	pl := startStreamTo(t, s.a2, s.b1, portPlainStream, 2*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	if err := agent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	agent.Wait()
	time.Sleep(200 * time.Millisecond)
	_, changes := startHelperAgent(t, s.a, sa)
	time.Sleep(300 * time.Millisecond)
	es, el, eg := enc.result()
	ps, pl2, pg := pl.result()
	t.Logf("kill -9 of the agent during two streams: encrypted %d sent, %d lost (longest silence %s); plain %d sent, %d lost (longest silence %s); restart changed %q",
		es, el, eg, ps, pl2, pg, changes)
	if el != 0 || pl2 != 0 || es == 0 || ps == 0 {
		for _, h := range []*host{s.a, s.b} {
			st, _ := h.dp.Status(ctx)
			t.Logf("%s drops: %+v", h.name, st.Drops)
		}
		t.Fatalf("lost %d of %d encrypted and %d of %d plain datagrams across the agent's kill and restart", el, es, pl2, ps)
	}
	if changes != "" {
		t.Errorf("the restarted agent's first Apply changed %q", changes)
	}
	if got := wgShow(t, s.a); got != wgBefore {
		t.Fatalf("wg show changed across the agent's restart:\nbefore:\n%s\nafter:\n%s", wgBefore, got)
	}
	if got := s.a.dp.datapathPID(); !s.a.kernel && got != pid {
		t.Fatalf("datapath process %d after the agent's restart, was %d", got, pid)
	}
}

// TestRotationLoss: see testRotationLoss.
func TestRotationLoss(t *testing.T) {
	s := newScenario(t)
	stA, stB := s.apply(t)
	driveHandshakes(t, s, 3*time.Second)
	testRotationLoss(t, s, stA, stB, 10)
}
