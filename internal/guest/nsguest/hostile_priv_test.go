package nsguest

// The hostile-guest suite: `corridor sample hostile` runs as a netns task
// and attacks its guest; every attack must fail, and the host (this test,
// standing in for the agent) and another task must come out unharmed.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/sample"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// hostileWorld is a host as an agent leaves it: a state directory with
// keys and a token beside the guests' directory, a WireGuard UAPI socket,
// and a victim task running next to the hostile one.
type hostileWorld struct {
	e      *env
	keys   []string
	uapi   string
	victim compile.Guest
	vPID   int // the victim's guest-init, as the host sees it
	vProg  int // the victim's program
}

func newHostileWorld(t *testing.T) *hostileWorld {
	t.Helper()
	testnet.NeedRoot(t, "runs sealed guests")
	bin := testnet.Binary(t, "sample hostile")
	// Where an agent keeps its state (not under /tmp, which a guest has
	// of its own anyway).
	state := fmt.Sprintf("/var/lib/cortst-hostile-%d-%s", os.Getpid(), t.Name())
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	w := &hostileWorld{}
	w.e = newEnv(t, func(c *Config) {
		c.StateDir = filepath.Join(state, "guests")
		c.Binary, c.InitBinary = bin, bin
	})
	for name, content := range map[string]string{
		"wireguard.key": "cHJpdmF0ZS1rZXktb2YtdGhpcy1ob3N0LTMyYnl0ZXM=\n",
		"agent.key":     "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n",
		"admin.token":   "corridor-admin-token-secret\n",
	} {
		p := filepath.Join(state, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		w.keys = append(w.keys, p)
	}
	// A UAPI socket where wireguard-go puts them, answering like one.
	if err := os.MkdirAll("/var/run/wireguard", 0o755); err != nil {
		t.Fatal(err)
	}
	w.uapi = fmt.Sprintf("/var/run/wireguard/cortst%d.sock", os.Getpid())
	l, err := net.Listen("unix", w.uapi)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); os.Remove(w.uapi) })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, "private_key=0123456789abcdef\nerrno=0\n\n")
			c.Close()
		}
	}()
	w.victim = w.e.guest("victim", "sleep", "3600")
	w.e.ensure(w.victim)
	w.vPID = w.e.runningPID(w.e.r, w.victim.Task)
	w.vProg = programPID(t, w.vPID)
	return w
}

// unharmed checks that the victim task still runs the same processes and
// that the host can still start a process.
func (w *hostileWorld) unharmed(t *testing.T) {
	t.Helper()
	for _, pid := range []int{w.vPID, w.vProg} {
		if gone(pid) {
			t.Errorf("victim task process %d is gone", pid)
		}
	}
	if out, err := exec.Command("true").CombinedOutput(); err != nil {
		t.Errorf("the host cannot start a process: %v %s", err, out)
	}
}

func logOf(t *testing.T, e *env, task string) string {
	t.Helper()
	b, _ := os.ReadFile(guest.LogPath(e.cfg.StateDir, task))
	return string(b)
}

func waitLog(t *testing.T, e *env, task string, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	var m []string
	deadline := time.Now().Add(timeout)
	for {
		if m = re.FindStringSubmatch(logOf(t, e, task)); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q in task.log after %s:\n%s", task, re, timeout, logOf(t, e, task))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHostileGuest runs every check of `corridor sample hostile` in a
// sealed guest and asserts that each was refused.
func TestHostileGuest(t *testing.T) {
	w := newHostileWorld(t)
	e := w.e
	args := []string{"corridor", "sample", "hostile",
		"--uapi", w.uapi, "--netns", testnet.Path(e.hostNS), "--netns", guest.NetnsPath(w.victim.Task),
		"--netns", "/proc/1/ns/net",
		"--pid", strconv.Itoa(os.Getpid()), "--pid", strconv.Itoa(w.vPID), "--pid", strconv.Itoa(w.vProg)}
	for _, k := range w.keys {
		args = append(args, "--key", k)
	}
	g := e.guest("hostile", args...)
	e.ensure(g)
	waitLog(t, e, g.Task, regexp.MustCompile(regexp.QuoteMeta(sample.HostileDone)), 60*time.Second)

	// The netns of this test (the agent's) and of the simulated host.
	hostNetns := []uint64{inode(t, "/proc/self/ns/net"), inode(t, testnet.Path(e.hostNS))}
	results := map[string]sample.HostileResult{}
	sc := bufio.NewScanner(strings.NewReader(logOf(t, e, g.Task)))
	for sc.Scan() {
		var r sample.HostileResult
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Check != "" {
			results[r.Check] = r
		}
	}
	want := []string{"uid", "capabilities", "read-keys", "list-run-netns", "open-host-netns", "setns", "uapi",
		"nft-list", "netlink-link-add", "nftables-add-table", "see-processes", "signal-host-processes",
		"mount", "unshare-user", "ptrace", "raw-socket", "packet-socket"}
	for _, c := range want {
		r, ok := results[c]
		switch {
		case !ok:
			t.Errorf("check %s: no result in the log", c)
		case !r.Refused:
			t.Errorf("check %s: NOT refused: %s", c, r.Detail)
		default:
			t.Logf("%-22s refused: %s", c, r.Detail)
		}
	}
	if len(results) != len(want) {
		t.Errorf("%d results, want %d: the suite and the program disagree", len(results), len(want))
	}
	// /proc/1/ns/net in the guest is its own init's: never the host's.
	for _, ino := range hostNetns {
		if d := results["setns"].Detail; strings.Contains(d, fmt.Sprintf("inode %d,", ino)) || strings.HasSuffix(d, fmt.Sprintf("inode %d", ino)) {
			t.Errorf("the guest sees the host's netns (inode %d): %s", ino, d)
		}
	}
	// Only its own processes: guest-init (pid 1) and the program.
	if d := results["see-processes"].Detail; !strings.HasPrefix(d, "2 processes: 1:corridor:") {
		t.Errorf("processes seen: %s", d)
	}
	w.unharmed(t)
}

// TestSealedShell is the issue's own check, through a shell: a task that
// prints `id -u`, reads every wireguard.key it can find and runs `nft list
// tables` prints a uid other than 0, reads 0 bytes, fails the listing, and
// sees only its own processes in /proc.
func TestSealedShell(t *testing.T) {
	w := newHostileWorld(t)
	e := w.e
	script := `echo "uid=$(id -u)"
n=0
for f in ` + strings.Join(w.keys, " ") + ` $(find / -xdev -name wireguard.key 2>/dev/null); do
	c=$(cat "$f" 2>/dev/null | wc -c); n=$((n + c))
done
echo "keybytes=$n"
nft list tables; echo "nft=$?"
echo "proc=$(cd /proc && ls -d [0-9]* | tr '\n' ' ')"
exec sleep 3600`
	g := e.guest("shell", "sh", "-c", script)
	e.ensure(g)
	m := waitLog(t, e, g.Task, regexp.MustCompile(`uid=(\d+)\nkeybytes=(\d+)\n(?s:.*)nft=(\d+)\nproc=([0-9 ]*)\n`), 30*time.Second)
	if m[1] == "0" || m[1] != strconv.Itoa(int(TaskID(g.Task))) {
		t.Errorf("id -u = %s, want the task's id %d", m[1], TaskID(g.Task))
	}
	if m[2] != "0" {
		t.Errorf("read %s bytes of keys", m[2])
	}
	if m[3] == "0" {
		t.Errorf("nft list tables succeeded")
	}
	// guest-init, the shell, and the subshells of the listing: a handful
	// of small PIDs of the guest's own namespace, 1 its guest-init.
	procs := strings.Fields(m[4])
	if len(procs) > 8 || len(procs) == 0 || procs[0] != "1" {
		t.Errorf("/proc shows %q: not only the guest's own processes", m[4])
	}
	for _, p := range procs {
		if n, _ := strconv.Atoi(p); n > 200 {
			t.Errorf("/proc shows pid %s: not the guest's own (%s)", p, m[4])
		}
	}
	t.Logf("uid=%s keybytes=%s nft=%s proc=%s", m[1], m[2], m[3], m[4])
	w.unharmed(t)
}

// TestHostileForkBomb: a fork bomb stops at the task's pids limit; the
// host and the other task go on.
func TestHostileForkBomb(t *testing.T) {
	w := newHostileWorld(t)
	e := w.e
	g := e.guest("bomb", "corridor", "sample", "hostile", "--fork-bomb")
	g.Resources.Pids = 64
	e.ensure(g)
	m := waitLog(t, e, g.Task, regexp.MustCompile(`fork-bomb: contained after (\d+) processes: (.*)\n`), 60*time.Second)
	n, _ := strconv.Atoi(m[1])
	if n >= 64 || n < 10 {
		t.Errorf("contained after %d processes, want fewer than the limit 64 (and a few)", n)
	}
	if !strings.Contains(m[2], "resource temporarily unavailable") {
		t.Errorf("refused with %q, want EAGAIN", m[2])
	}
	cg := e.r.cgroup(g.Task)
	if procs := len(cg.Procs()); procs > 64 {
		t.Errorf("%d processes in the task's cgroup, over its limit 64", procs)
	}
	if d := cg.Dir("pids"); e.r.cgroups.Unified() || d != cg.Dir("cpu") {
		if ev, err := os.ReadFile(filepath.Join(d, "pids.events")); err == nil && !bytes.Contains(ev, []byte("max ")) {
			t.Errorf("pids.events = %q", ev)
		}
	}
	w.unharmed(t)
}

// TestHostileFillMemory: a task that fills memory is killed at its memory
// limit, not the agent (this test) nor the other task.
func TestHostileFillMemory(t *testing.T) {
	w := newHostileWorld(t)
	e := w.e
	g := e.guest("hog", "corridor", "sample", "hostile", "--fill-memory")
	g.Resources.Memory = 48 << 20
	e.ensure(g)
	waitLog(t, e, g.Task, regexp.MustCompile(`corridor guest-init: corridor killed by signal killed\n`), 60*time.Second)
	log := logOf(t, e, g.Task)
	if strings.Contains(log, "NOT stopped") {
		t.Errorf("memory not limited:\n%s", log)
	}
	var most int
	for _, m := range regexp.MustCompile(`fill-memory: (\d+) MiB`).FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		most = max(most, n)
	}
	if most > 48 {
		t.Errorf("held %d MiB under a 48 MiB limit", most)
	}
	waitFor(t, "the supervisor to see the kill", 10*time.Second, func() bool { return e.r.Status(g.Task).Restarts >= 1 })
	t.Logf("status after the kill: %+v", e.r.Status(g.Task))
	if err := syscall.Kill(os.Getpid(), 0); err != nil {
		t.Errorf("the agent is gone: %v", err)
	}
	w.unharmed(t)
}

// TestSealedOptions: guest.user picks the uid and gid, and guest.netRaw
// keeps CAP_NET_RAW (and nothing else) so that a raw socket opens.
func TestSealedOptions(t *testing.T) {
	w := newHostileWorld(t)
	e := w.e
	g := e.guest("raw", "sh", "-c", `echo "ids=$(id -u):$(id -g)"; grep -E '^Cap(Eff|Bnd|Amb)' /proc/self/status | tr '\n' ' '; echo; exec sleep 3600`)
	g.Spec.User = "4242:4343"
	g.Spec.NetRaw = true
	e.ensure(g)
	m := waitLog(t, e, g.Task, regexp.MustCompile(`ids=(\d+:\d+)\nCapEff:\s+(\w+) CapBnd:\s+(\w+) CapAmb:\s+(\w+)`), 30*time.Second)
	if m[1] != "4242:4343" {
		t.Errorf("ids %s, want 4242:4343", m[1])
	}
	const netRaw = "0000000000002000" // 1 << CAP_NET_RAW (13)
	if m[2] != netRaw || m[3] != netRaw || m[4] != netRaw {
		t.Errorf("CapEff %s CapBnd %s CapAmb %s, want %s each", m[2], m[3], m[4], netRaw)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(guest.DataDir(e.cfg.StateDir, g.Task), &st); err != nil || st.Uid != 4242 || st.Gid != 4343 {
		t.Errorf("data directory owned by %d:%d (%v), want 4242:4343", st.Uid, st.Gid, err)
	}
	w.unharmed(t)
}
