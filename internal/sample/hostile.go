package sample

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Hostile is a task program that attacks its own guest: each check tries
// something a sealed netns guest must not be able to do and reports
// whether it was refused. `corridor sample hostile` runs it; the hostile
// guest suite (internal/guest/nsguest, hostile_priv_test.go) runs it as a
// task and asserts every outcome. It is a test tool, never part of the
// sample app.
type Hostile struct {
	// Keys are files (host paths) that hold secrets: the agent's keys and
	// tokens. The check also looks for key-like files anywhere it can see.
	Keys []string
	// Netns are network namespace files of the host (/run/netns/NAME,
	// /proc/1/ns/net as the host names them) to open.
	Netns []string
	// UAPI are WireGuard UAPI sockets of the host to dial.
	UAPI []string
	// PIDs are host processes (the agent, the server, other tasks) to
	// signal with signal 0.
	PIDs []int
	Out  io.Writer
}

// HostileResult is one check's outcome, printed as a JSON line.
type HostileResult struct {
	Check   string `json:"check"`
	Refused bool   `json:"refused"`
	Detail  string `json:"detail"`
}

// HostileDone starts the summary line Run prints after the checks.
const HostileDone = "hostile: done"

// Run makes every check, prints one JSON line per check and a summary
// line, and returns how many were not refused.
func (h *Hostile) Run() int {
	checks := []struct {
		name string
		fn   func() (bool, string)
	}{
		{"uid", h.uid},
		{"capabilities", capabilities},
		{"read-keys", h.readKeys},
		{"list-run-netns", listRunNetns},
		{"open-host-netns", h.openNetns},
		{"setns", setnsOwnInit},
		{"uapi", h.uapi},
		{"nft-list", nftList},
		{"netlink-link-add", netlinkLinkAdd},
		{"nftables-add-table", nftablesAddTable},
		{"see-processes", seeProcesses},
		{"signal-host-processes", h.signalHost},
		{"mount", mountTmpfs},
		{"unshare-user", unshareUser},
		{"ptrace", ptraceInit},
		{"raw-socket", rawSocket},
		{"packet-socket", packetSocket},
	}
	enc := json.NewEncoder(h.Out)
	failed := 0
	for _, c := range checks {
		refused, detail := c.fn()
		if !refused {
			failed++
		}
		_ = enc.Encode(HostileResult{Check: c.name, Refused: refused, Detail: detail})
	}
	fmt.Fprintf(h.Out, "%s: %d checks, %d not refused\n", HostileDone, len(checks), failed)
	return failed
}

func (h *Hostile) uid() (bool, string) {
	return os.Getuid() != 0 && os.Geteuid() != 0, fmt.Sprintf("uid %d euid %d gid %d groups %v", os.Getuid(), os.Geteuid(), os.Getgid(), must(os.Getgroups()))
}

func must[T any](v T, _ error) T { return v }

// capabilities: no capability in any set, no_new_privs, seccomp filtering.
func capabilities() (bool, string) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false, err.Error()
	}
	defer f.Close()
	want := map[string]string{"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
		"CapBnd": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}
	var got []string
	ok := true
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		v = strings.TrimSpace(v)
		if w, in := want[k]; in {
			got = append(got, k+"="+v)
			if v != w {
				ok = false
			}
			delete(want, k)
		}
	}
	return ok && len(want) == 0, strings.Join(got, " ")
}

// keyLike tells whether a file name looks like a secret of Corridor's.
func keyLike(name string) bool {
	return strings.HasSuffix(name, ".key") || strings.Contains(name, "token") || name == "wg.conf" ||
		strings.HasPrefix(name, "corw") && strings.HasSuffix(name, ".sock")
}

// readKeys reads the given key files and every key-like file it can find
// (outside /proc, /sys and the host's read-only /usr): refused when no
// byte of any could be read.
func (h *Hostile) readKeys() (bool, string) {
	var found []string
	total := 0
	read := func(p string) {
		b, err := os.ReadFile(p)
		total += len(b)
		if err != nil {
			found = append(found, fmt.Sprintf("%s: %v", p, errors.Unwrap(err)))
		} else {
			found = append(found, fmt.Sprintf("%s: READ %d bytes", p, len(b)))
		}
	}
	for _, k := range h.Keys {
		read(k)
	}
	_ = filepath.WalkDir("/", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && (p == "/proc" || p == "/sys" || p == "/usr") {
			return filepath.SkipDir
		}
		if !d.IsDir() && keyLike(d.Name()) {
			read(p)
		}
		return nil
	})
	return total == 0, fmt.Sprintf("%d bytes read; %s", total, strings.Join(found, "; "))
}

func listRunNetns() (bool, string) {
	var out []string
	refused := true
	for _, d := range []string{"/run/netns", "/var/run/netns"} {
		ents, err := os.ReadDir(d)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", d, errors.Unwrap(err)))
			continue
		}
		if len(ents) > 0 {
			refused = false
		}
		out = append(out, fmt.Sprintf("%s: %d entries", d, len(ents)))
	}
	return refused, strings.Join(out, "; ")
}

func (h *Hostile) openNetns() (bool, string) {
	var out []string
	refused := true
	for _, p := range h.Netns {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err == nil {
			refused = false
			out = append(out, p+": OPENED AND ENTERED")
		} else {
			out = append(out, fmt.Sprintf("%s: opened, setns: %v", p, err))
		}
	}
	return refused, strings.Join(out, "; ")
}

// nsInode is the inode of a namespace file, 0 if it cannot be read.
func nsInode(p string) uint64 {
	var st unix.Stat_t
	if unix.Stat(p, &st) != nil {
		return 0
	}
	return st.Ino
}

// setnsOwnInit opens /proc/1/ns/net (in the guest: its own init's, which
// is its own namespace) and tries to enter it: setns itself is refused.
// The detail names the inodes, for the test to compare with the host's.
func setnsOwnInit() (bool, string) {
	detail := fmt.Sprintf("/proc/1/ns/net inode %d, /proc/self/ns/net inode %d", nsInode("/proc/1/ns/net"), nsInode("/proc/self/ns/net"))
	fd, err := unix.Open("/proc/1/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return true, detail + "; open: " + err.Error()
	}
	defer unix.Close(fd)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return true, detail + "; setns: " + err.Error()
	}
	return false, detail + "; setns SUCCEEDED"
}

func (h *Hostile) uapi() (bool, string) {
	var out []string
	refused := true
	for _, d := range []string{"/var/run/wireguard", "/run/wireguard"} {
		ents, err := os.ReadDir(d)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", d, errors.Unwrap(err)))
			continue
		}
		for _, e := range ents {
			h.UAPI = append(h.UAPI, filepath.Join(d, e.Name()))
		}
	}
	for _, s := range h.UAPI {
		c, err := net.DialTimeout("unix", s, time.Second)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", s, err))
			continue
		}
		refused = false
		_ = c.SetDeadline(time.Now().Add(time.Second))
		fmt.Fprint(c, "get=1\n\n")
		b, _ := io.ReadAll(io.LimitReader(c, 4096))
		c.Close()
		out = append(out, fmt.Sprintf("%s: CONNECTED, read %d bytes", s, len(b)))
	}
	return refused, strings.Join(out, "; ")
}

func nftList() (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		return true, fmt.Sprintf("nft list ruleset: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return false, fmt.Sprintf("nft list ruleset SUCCEEDED: %d bytes", len(out))
}

func netlinkLinkAdd() (bool, string) {
	name := fmt.Sprintf("hostile%d", os.Getpid()%10000)
	err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"})
	if err != nil {
		return true, "veth add: " + err.Error()
	}
	if l, err := netlink.LinkByName(name); err == nil {
		_ = netlink.LinkDel(l)
	}
	return false, "veth add SUCCEEDED"
}

func nftablesAddTable() (bool, string) {
	c, err := nftables.New()
	if err != nil {
		return true, "nftables: " + err.Error()
	}
	defer c.CloseLasting()
	c.AddTable(&nftables.Table{Name: "hostile", Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil {
		return true, "add table: " + err.Error()
	}
	c.DelTable(&nftables.Table{Name: "hostile", Family: nftables.TableFamilyINet})
	_ = c.Flush()
	return false, "add table SUCCEEDED"
}

// seeProcesses lists /proc: refused when every process there runs as this
// program's uid (its own guest-init and its own processes).
func seeProcesses() (bool, string) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return true, err.Error()
	}
	me := uint32(os.Getuid())
	refused := true
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+e.Name(), &st) != nil {
			continue
		}
		comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
		if st.Uid != me {
			refused = false
		}
		out = append(out, fmt.Sprintf("%d:%s:uid=%d", pid, strings.TrimSpace(string(comm)), st.Uid))
	}
	return refused, fmt.Sprintf("%d processes: %s", len(out), strings.Join(out, " "))
}

func (h *Hostile) signalHost() (bool, string) {
	refused := true
	var out []string
	for _, pid := range h.PIDs {
		err := unix.Kill(pid, 0)
		if err == nil {
			// A number the guest's PID namespace also has is one of
			// its own processes, not the host's.
			comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
			out = append(out, fmt.Sprintf("%d: exists here (%s)", pid, strings.TrimSpace(string(comm))))
			refused = false
			continue
		}
		out = append(out, fmt.Sprintf("%d: %v", pid, err))
	}
	// Every process it may signal: all of its own PID namespace.
	err := unix.Kill(-1, 0)
	out = append(out, fmt.Sprintf("kill(-1, 0): %v", err))
	return refused, strings.Join(out, "; ")
}

func mountTmpfs() (bool, string) {
	var out []string
	refused := true
	for _, m := range []struct{ src, dst, fstype string }{{"tmpfs", "/tmp", "tmpfs"}, {"proc", "/tmp", "proc"}, {"/", "/tmp", ""}} {
		flags := uintptr(0)
		if m.fstype == "" {
			flags = unix.MS_BIND
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, flags, ""); err != nil {
			out = append(out, fmt.Sprintf("mount %s: %v", m.src, err))
			continue
		}
		_ = unix.Unmount(m.dst, unix.MNT_DETACH)
		refused = false
		out = append(out, "mount "+m.src+" SUCCEEDED")
	}
	return refused, strings.Join(out, "; ")
}

func unshareUser() (bool, string) {
	runtime.LockOSThread() // a thread that may have changed stays locked and dies with its goroutine
	if err := unix.Unshare(unix.CLONE_NEWUSER); err != nil {
		runtime.UnlockOSThread()
		return true, "unshare(CLONE_NEWUSER): " + err.Error()
	}
	return false, "unshare(CLONE_NEWUSER) SUCCEEDED"
}

func ptraceInit() (bool, string) {
	// PID 1 is guest-init, of this program's uid: only seccomp refuses.
	if _, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_ATTACH, 1, 0, 0, 0, 0); e != 0 {
		return true, "ptrace(ATTACH, 1): " + e.Error()
	}
	_, _, _ = unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_DETACH, 1, 0, 0, 0, 0)
	return false, "ptrace(ATTACH, 1) SUCCEEDED"
}

func rawSocket() (bool, string) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	if err != nil {
		return true, "socket(AF_INET, SOCK_RAW): " + err.Error()
	}
	unix.Close(fd)
	return false, "socket(AF_INET, SOCK_RAW) SUCCEEDED"
}

func packetSocket() (bool, string) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0x0300) // htons(ETH_P_ALL)
	if err != nil {
		return true, "socket(AF_PACKET): " + err.Error()
	}
	unix.Close(fd)
	return false, "socket(AF_PACKET) SUCCEEDED"
}

// ForkBomb starts `sleep` processes until the kernel refuses one, prints
// how many it got, and returns (the processes stay, for the test to see
// the pids limit reached).
func ForkBomb(out io.Writer) {
	n := 0
	for {
		cmd := exec.Command("sleep", "3600")
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(out, "fork-bomb: contained after %d processes: %v\n", n, err)
			return
		}
		n++
		if n%100 == 0 {
			fmt.Fprintf(out, "fork-bomb: %d processes\n", n)
		}
		if n > 1<<20 {
			fmt.Fprintf(out, "fork-bomb: NOT contained after %d processes\n", n)
			return
		}
	}
}

// FillMemory allocates and touches memory in 8 MiB steps until it is
// killed, printing what it holds every 32 MiB.
func FillMemory(out io.Writer) {
	var hold [][]byte
	for i := 1; ; i++ {
		b := make([]byte, 8<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		hold = append(hold, b)
		runtime.KeepAlive(hold)
		if i%4 == 0 {
			fmt.Fprintf(out, "fill-memory: %d MiB\n", i*8)
		}
		if i*8 > 64<<10 {
			fmt.Fprintf(out, "fill-memory: NOT stopped at %d MiB\n", i*8)
			_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
		}
	}
}
