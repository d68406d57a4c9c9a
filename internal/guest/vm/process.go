package vm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// qemuRecord identifies a running QEMU across agent restarts: its PID
// plus the kernel's start time of that PID (a PID alone may be reused).
type qemuRecord struct {
	PID       int       `json:"pid"`
	StartTime uint64    `json:"startTime"`
	Hash      string    `json:"hash"`      // of what it runs (argv)
	Accel     string    `json:"accel"`     // kvm or tcg
	LogOffset int64     `json:"logOffset"` // console log size when it started
	Started   time.Time `json:"started"`
}

func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, fmt.Errorf("process %d has exited", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func (rec qemuRecord) alive() bool {
	if rec.PID <= 0 {
		return false
	}
	st, err := procStartTime(rec.PID)
	return err == nil && st == rec.StartTime
}

func readRecord(dir string) (qemuRecord, error) {
	var rec qemuRecord
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("%s: %w", filepath.Join(dir, pidFile), err)
	}
	return rec, nil
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("vm: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("vm: write %s: %w", path, err)
	}
	return nil
}

// qemuProc is a QEMU the runtime watches: its own child or one adopted
// from an earlier agent.
type qemuProc struct {
	qemuRecord
	qmp    string        // QMP socket path
	exited chan struct{} // closed when the process is gone
	status string        // why it ended, set before exited closes
	quit   chan struct{} // stop watching an adopted process
}

func watchChild(cmd *exec.Cmd, rec qemuRecord, qmp string) *qemuProc {
	p := &qemuProc{qemuRecord: rec, qmp: qmp, exited: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
			p.status = "QEMU exited with status 0"
		case errors.As(err, &ee):
			ws := ee.Sys().(syscall.WaitStatus)
			if ws.Signaled() {
				p.status = "QEMU killed by signal " + ws.Signal().String()
			} else {
				p.status = "QEMU exited with status " + strconv.Itoa(ws.ExitStatus())
			}
		default:
			p.status = "QEMU: " + err.Error()
		}
		close(p.exited)
	}()
	return p
}

// adopt watches a QEMU started by an earlier agent through a pidfd.
func adopt(rec qemuRecord, qmp string) (*qemuProc, error) {
	fd, err := unix.PidfdOpen(rec.PID, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", rec.PID, err)
	}
	if !rec.alive() { // checked after the pidfd pins the process
		unix.Close(fd)
		return nil, fmt.Errorf("process %d is gone", rec.PID)
	}
	p := &qemuProc{qemuRecord: rec, qmp: qmp, exited: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			select {
			case <-p.quit:
				return
			default:
			}
			n, err := unix.Poll(fds, 500)
			if err != nil && !errors.Is(err, unix.EINTR) {
				p.status = "lost track of QEMU: " + err.Error()
				break
			}
			if n > 0 {
				p.status = "QEMU exited (status unknown: started by an earlier agent)"
				break
			}
		}
		close(p.exited)
	}()
	return p, nil
}

func (p *qemuProc) release() {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
}

func (p *qemuProc) gone() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// stop asks the guest to power off (ACPI power button through QMP: the
// guest init sends its task SIGTERM), then kills QEMU once grace has
// passed.
func (p *qemuProc) stop(grace time.Duration) {
	if p.gone() {
		return
	}
	if err := qmpCommand(p.qmp, "system_powerdown", 2*time.Second); err != nil {
		_ = syscall.Kill(p.PID, syscall.SIGTERM)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
		return
	case <-t.C:
	}
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
	}
}

// qmpCommand runs one QMP command without arguments and waits for its
// answer.
func qmpCommand(sock, command string, timeout time.Duration) error {
	_, err := qmpQuery(sock, command, timeout)
	return err
}

// qmpQuery runs one QMP command and returns its "return" value.
func qmpQuery(sock, command string, timeout time.Duration) (json.RawMessage, error) {
	c, err := net.DialTimeout("unix", sock, timeout)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	r := bufio.NewReader(c)
	var msg struct {
		QMP    json.RawMessage `json:"QMP"`
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
		Event string `json:"event"`
	}
	read := func() error {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return fmt.Errorf("qmp: read: %w", err)
			}
			msg.Return, msg.Error, msg.Event, msg.QMP = nil, nil, "", nil
			if err := json.Unmarshal(line, &msg); err != nil {
				return fmt.Errorf("qmp: %w", err)
			}
			if msg.Event == "" { // events may come between; skip them
				return nil
			}
		}
	}
	if err := read(); err != nil || msg.QMP == nil {
		return nil, errors.Join(err, errors.New("qmp: no greeting"))
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(c, "{\"execute\":%q}\n", cmd); err != nil {
			return nil, fmt.Errorf("qmp: write: %w", err)
		}
		if err := read(); err != nil {
			return nil, err
		}
		if msg.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, msg.Error.Class, msg.Error.Desc)
		}
	}
	return msg.Return, nil
}

// startIn starts cmd with the calling goroutine's thread moved into ns,
// so that QEMU opens the tap by name in the host namespace. The thread
// is discarded if it cannot be moved back.
func startIn(ns netns.NsHandle, cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter host netns: %w", err)
			return
		}
		serr := cmd.Start()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(serr, fmt.Errorf("leave host netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- serr
	}()
	return <-errc
}

// inNetns runs fn on a locked thread inside ns.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// createTap makes a persistent tap named name in ns (TUNSETIFF acts in
// the namespace of the calling thread). QEMU attaches to it by name; the
// tap outlives QEMU restarts, so the host route through it stays.
func createTap(ns netns.NsHandle, name string) error {
	return inNetns(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return fmt.Errorf("tap name %q: %w", name, err)
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
			return fmt.Errorf("make tap %s persistent: %w", name, err)
		}
		return nil
	})
}
