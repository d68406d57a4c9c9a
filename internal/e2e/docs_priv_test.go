package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// operationsMarker precedes each command block of docs/operations.md that
// TestOperationsPageRunsAsWritten runs.
const operationsMarker = "<!-- test: operations -->"

// operationsBlocks extracts the marked ```sh blocks of a Markdown page, in
// order.
func operationsBlocks(page string) []string {
	var blocks []string
	rest := page
	for {
		i := strings.Index(rest, operationsMarker)
		if i < 0 {
			return blocks
		}
		rest = rest[i+len(operationsMarker):]
		start := strings.Index(rest, "```sh\n")
		if start < 0 {
			return blocks
		}
		rest = rest[start+len("```sh\n"):]
		end := strings.Index(rest, "\n```")
		if end < 0 {
			return blocks
		}
		blocks = append(blocks, rest[:end+1])
		rest = rest[end:]
	}
}

func TestOperationsBlocksParsed(t *testing.T) {
	page := "x\n" + operationsMarker + "\n```sh\necho a\necho b\n```\nnot this\n```sh\nnot this either\n```\n" +
		operationsMarker + "\n\n```sh\necho c\n```\n"
	got := operationsBlocks(page)
	if len(got) != 2 || got[0] != "echo a\necho b\n" || got[1] != "echo c\n" {
		t.Fatalf("blocks: %q", got)
	}
}

// The setup section of docs/operations.md ("Several servers on one
// machine": hosts made of namespaces, the server, one agent per host, the
// shop app, verify, and removing it all) runs as written: the page cannot
// drift from the product.
func TestOperationsPageRunsAsWritten(t *testing.T) {
	testnet.NeedRoot(t, "makes network namespaces and runs a server and agents")
	for _, tool := range []string{"ip", "nsenter", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the page uses %s, which `make deps` installs: %v", tool, err)
		}
	}
	page, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := operationsBlocks(string(page))
	if len(blocks) < 5 {
		t.Fatalf("docs/operations.md has %d marked blocks; want the setup section's 5", len(blocks))
	}
	// The binary at a path of the test's own, named corridor as the page
	// calls it: every process still running it at the end is a leftover
	// of this test (the agents run the sample tiers with it too).
	binDir := t.TempDir()
	bin := filepath.Join(binDir, "corridor")
	testnet.CopyExecutable(t, testnet.Binary(t, "agent", "server"), bin)
	t.Cleanup(func() { removeTryLeftovers(t, bin) })

	cgroupsBefore := testnet.CorridorCgroups()
	script := "set -euo pipefail\nset -x\n" + strings.Join(blocks, "")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(),
		"PATH="+binDir+":"+os.Getenv("PATH"),
		"CORRIDOR_CONFIG="+filepath.Join(t.TempDir(), "config.json"),
		"CORRIDOR_SERVER=", "CORRIDOR_TOKEN=", "CORRIDOR_CA=")
	// Its own process group, ended whole on timeout: the server and agents
	// it starts in the background would otherwise hold the output open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("the page's commands:\n%s", out.String())
	if err != nil {
		for _, log := range []string{"server.log", "agent-s1.log", "agent-s2.log", "agent-s3.log"} {
			if b, rerr := os.ReadFile(filepath.Join("/var/lib/corridor-try", log)); rerr == nil {
				t.Logf("%s:\n%s", log, tail(string(b), 40))
			}
		}
		t.Fatalf("docs/operations.md's setup commands failed: %v", err)
	}
	if !regexp.MustCompile(`verify shop: all \d+ checks match the policy`).MatchString(out.String()) {
		t.Errorf("verify did not report every check matching")
	}
	// The page's cleanup left nothing: no process of the binary (the
	// agents' wireguard-go processes and the tasks run it too), no cgroup
	// made during the run.
	for _, pid := range testnet.ProcessesOf(bin) {
		t.Errorf("process %d of corridor still runs after the page's cleanup: %s", pid, cmdline(pid))
	}
	for c := range testnet.CorridorCgroups() {
		if !cgroupsBefore[c] {
			t.Errorf("cgroup %s left after the page's cleanup", c)
		}
	}
	if _, err := os.Stat("/var/lib/corridor-try"); !os.IsNotExist(err) {
		t.Errorf("/var/lib/corridor-try is still there after the page's cleanup: %v", err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// removeTryLeftovers undoes what a failed run of the page left: processes
// of the test's binary (by PID), the try-* namespaces and link, and the
// state. After a successful run there is nothing to do.
func removeTryLeftovers(t *testing.T, bin string) {
	for _, pid := range testnet.ProcessesOf(bin) {
		t.Logf("killing leftover process %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, i := range []string{"1", "2", "3"} {
		if ns := "try-s" + i; hostns.Exists(ns) {
			_ = exec.Command("nsenter", "--net="+hostns.Path(ns), bin, "agent", "--cleanup",
				"--state-dir", "/var/lib/corridor-try/s"+i, "--wg-name", "corw-try"+i).Run()
		}
	}
	for _, ns := range []string{"try-s1", "try-s2", "try-s3", "try-ul"} {
		if hostns.Exists(ns) {
			t.Logf("removing leftover namespace %s", ns)
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	}
	_ = exec.Command("ip", "link", "del", "try0").Run()
	_ = os.RemoveAll("/var/lib/corridor-try")
}

func cmdline(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
}

// An agent started the way many operators start a program in a namespace,
// `ip netns exec HOST corridor agent ...`, comes up and joins: ip netns
// exec mounts a fresh /sys, which hides /sys/fs/cgroup, and the agent
// mounts the hierarchies again in its own mount namespace.
func TestAgentUnderIPNetnsExec(t *testing.T) {
	testnet.NeedRoot(t, "makes a network namespace and runs a server and an agent")
	bin := testnet.Binary(t, "agent", "server")
	ns := testnet.Namespaces(t, "ipexec", "host")[0]
	root, peer := fmt.Sprintf("corx%d", os.Getpid()%10000), "eth0"
	testnet.IP(t, "link", "add", root, "type", "veth", "peer", "name", peer, "netns", ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", root).Run() })
	testnet.IP(t, "addr", "add", "198.18.98.1/24", "dev", root)
	testnet.IP(t, "link", "set", root, "up")
	testnet.IP(t, "-n", ns, "addr", "add", "198.18.98.11/24", "dev", peer)
	testnet.IP(t, "-n", ns, "link", "set", peer, "up")
	testnet.IP(t, "-n", ns, "route", "add", "default", "via", "198.18.98.1")

	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	server := exec.CommandContext(ctx, bin, "server", "--data-dir", filepath.Join(dir, "server"),
		"--listen", "198.18.98.1:0", "--advertise", "198.18.98.1")
	var serverOut testnet.Buffer
	server.Stderr = &serverOut
	if err := server.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); server.Wait() })
	url := waitFor(t, &serverOut, regexp.MustCompile(`corridor server at (https://\S+)`))
	wg := fmt.Sprintf("corwx%d", os.Getpid()%10000)
	agent := exec.CommandContext(ctx, "ip", "netns", "exec", ns, bin, "agent", "--server", url,
		"--join-token-file", filepath.Join(dir, "server", "join.token"), "--ca", filepath.Join(dir, "server", "ca.crt"),
		"--name", "x1", "--state-dir", filepath.Join(dir, "x1"), "--wg-name", wg)
	var agentOut testnet.Buffer
	agent.Stderr = &agentOut
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		agent.Wait()
		exec.Command("ip", "netns", "exec", ns, bin, "agent", "--cleanup", "--state-dir", filepath.Join(dir, "x1"), "--wg-name", wg).Run()
	})
	waitFor(t, &agentOut, regexp.MustCompile(`msg=reconciled`))
	if strings.Contains(agentOut.String(), "no cgroup hierarchy") {
		t.Fatalf("agent:\n%s", agentOut.String())
	}
}

// waitFor waits up to 60 s for re to match what w collected, and returns
// its first group (or the whole match).
func waitFor(t *testing.T, w *testnet.Buffer, re *regexp.Regexp) string {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if m := re.FindStringSubmatch(w.String()); m != nil {
			return m[len(m)-1]
		}
	}
	t.Fatalf("no %q within 60 s in:\n%s", re, w.String())
	return ""
}
