package vm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// qemuRecord is the pidfile of a running QEMU, which lets the next agent
// adopt it.
type qemuRecord struct {
	guest.ProcRecord
	Accel     string `json:"accel"`     // kvm or tcg
	LogOffset int64  `json:"logOffset"` // console log size when it started
}

func readRecord(dir string) (qemuRecord, error) {
	var rec qemuRecord
	err := guest.ReadJSON(filepath.Join(dir, pidFile), &rec)
	return rec, err
}

// qemuProc is a QEMU the runtime watches: its own child or one adopted
// from an earlier agent. It is a guest.Program.
type qemuProc struct {
	qemuRecord
	*guest.Exit
	qmp string // QMP socket path
}

func watchChild(cmd *exec.Cmd, rec qemuRecord, qmp string) *qemuProc {
	return &qemuProc{qemuRecord: rec, Exit: guest.WaitChild(cmd, "QEMU"), qmp: qmp}
}

// adopt watches a QEMU started by an earlier agent.
func adopt(rec qemuRecord, qmp string) (*qemuProc, error) {
	e, err := guest.WatchAdopted(rec.ProcID, "QEMU")
	if err != nil {
		return nil, err
	}
	return &qemuProc{qemuRecord: rec, Exit: e, qmp: qmp}, nil
}

// Record implements guest.Program.
func (p *qemuProc) Record() guest.ProcRecord { return p.ProcRecord }

// End asks the guest to power off (ACPI power button through QMP: the
// guest init sends its task SIGTERM), then kills QEMU once grace has
// passed.
func (p *qemuProc) End(grace time.Duration) {
	p.Stop(grace,
		func() {
			if err := qmpCommand(p.qmp, "system_powerdown", 2*time.Second); err != nil {
				_ = syscall.Kill(p.PID, syscall.SIGTERM)
			}
		},
		p.Kill)
}

// Kill implements guest.Program: SIGKILL to QEMU.
func (p *qemuProc) Kill() { _ = syscall.Kill(p.PID, syscall.SIGKILL) }

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

// createTap makes a persistent tap named name in ns (TUNSETIFF acts in
// the namespace of the calling thread). QEMU attaches to it by name; the
// tap outlives QEMU restarts, so the host route through it stays.
func createTap(ns netns.NsHandle, name string) error {
	return nsrun.DoHandle(ns, func() error {
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

// CreateTap makes a persistent tap (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, as
// QEMU's tap netdev expects) named name in the network namespace ns.
// Other QEMU runners (internal/vmhost) use it for their taps.
func CreateTap(ns netns.NsHandle, name string) error { return createTap(ns, name) }
