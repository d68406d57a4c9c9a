package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/atomicfile"
)

// Accelerators QEMU may use.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// probeFile caches the KVM verdict in the state directory, for the
// host's current boot only.
const probeFile = "kvm-probe.json"

type probeVerdict struct {
	BootID string    `json:"bootID"`
	Kernel string    `json:"kernel"` // the guest kernel probed with
	Accel  string    `json:"accel"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// probeKVM boots kernel+initrd with KVM and tells whether the guest init
// ran. /dev/kvm existing is not enough: some hosts expose a /dev/kvm that
// cannot run a stock guest kernel (QEMU aborts, or the guest hangs).
func probeKVM(ctx context.Context, qemu, kernel, initrd string, timeout time.Duration) (bool, string) {
	return ProbeKVM(ctx, qemu, kernel, initrd, "corridor-guest:", timeout)
}

// ProbeKVM boots kernel+initrd under KVM, without a network, and tells
// whether the init printed a console line starting with line (and why
// not). The image's init must print it and power off when it finds no
// configuration (as internal/image's and internal/vmhost's do). Other
// VM runners (internal/vmhost) use it to choose KVM or TCG.
func ProbeKVM(ctx context.Context, qemu, kernel, initrd, line string, timeout time.Duration) (bool, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("/dev/kvm: %v", err)
	}
	f.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "corridor-kvm-probe-")
	if err != nil {
		return false, err.Error()
	}
	defer os.RemoveAll(dir)
	con := filepath.Join(dir, "console.log")
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "pc", "-enable-kvm", "-cpu", "host", "-m", "128",
		"-kernel", kernel,
		// No corridor.addr: the guest init says so on the console and
		// powers off, which proves a whole boot.
		"-append", "console=ttyS0 quiet panic=-1",
		"-chardev", "file,id=con,path=" + con, "-serial", "chardev:con",
	}
	if initrd != "" {
		args = append(args, "-initrd", initrd)
	}
	cmd := exec.CommandContext(ctx, qemu, args...)
	out, _ := cmd.CombinedOutput()
	if consoleHas(con, 0, line) {
		return true, "guest booted under KVM"
	}
	why := strings.TrimSpace(string(out))
	if ctx.Err() != nil {
		why = fmt.Sprintf("no guest init within %s", timeout)
	}
	if tail := consoleTail(con, 0, 3); tail != "" {
		why += "; console: " + tail
	}
	return false, why
}

// accel decides KVM or TCG once per runtime, from the cached verdict of
// this host boot or from a probe boot.
func (r *Runtime) accel(ctx context.Context, kernel, initrd string) string {
	r.accelOnce.Do(func() {
		switch r.cfg.KVM {
		case KVMOn:
			r.setAccel(AccelKVM, "KVM forced by config")
			return
		case KVMOff:
			r.setAccel(AccelTCG, "KVM disabled by config")
			return
		}
		bootID := readBootID()
		path := filepath.Join(r.cfg.StateDir, probeFile)
		if b, err := os.ReadFile(path); err == nil {
			var v probeVerdict
			if json.Unmarshal(b, &v) == nil && v.BootID == bootID && v.Kernel == kernel && bootID != "" {
				r.setAccel(v.Accel, v.Reason+" (cached)")
				return
			}
		}
		ok, why := probeKVM(ctx, r.cfg.QEMU, kernel, initrd, r.cfg.ProbeTimeout)
		v := probeVerdict{BootID: bootID, Kernel: kernel, Accel: AccelTCG, Reason: "KVM probe failed: " + why, At: time.Now().UTC()}
		if ok {
			v.Accel, v.Reason = AccelKVM, why
		}
		r.setAccel(v.Accel, v.Reason)
		r.log.Info("accelerator chosen", "accel", v.Accel, "reason", v.Reason)
		if b, err := json.Marshal(v); err == nil {
			_ = atomicfile.Write(path, b, 0o644)
		}
	})
	a, _ := r.Accel()
	return a
}

func (r *Runtime) setAccel(accel, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.accelName, r.accelWhy = accel, why
}

func readBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
