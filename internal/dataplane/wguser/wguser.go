// Package wguser runs a userspace WireGuard device (wireguard-go) in the
// current process: a TUN device, the standard UDP bind and the UAPI socket
// in /var/run/wireguard through which wgctrl configures it. It is the body
// of the hidden "corridor datapath wireguard" command, one process per host
// namespace, started by the data plane where the kernel has no WireGuard.
package wguser

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// EnterNetNS makes the whole process live in the network namespace at
// path. wireguard-go opens sockets and looks up its TUN from goroutines
// that may run on any thread, so switching one thread is not enough: when
// the process is elsewhere, EnterNetNS moves a locked thread into the
// namespace and re-executes the binary from it, which gives the new
// program image that namespace on every thread. It returns nil when the
// process is already there (it does not return otherwise, unless on error).
func EnterNetNS(path string) error {
	if path == "" {
		return nil
	}
	var want, have unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &have); err != nil {
		return fmt.Errorf("current network namespace: %w", err)
	}
	if want.Dev == have.Dev && want.Ino == have.Ino {
		return nil
	}
	if os.Getenv("CORRIDOR_DATAPATH_REEXEC") != "" {
		return errors.New("re-executed but still not in the wanted network namespace")
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	runtime.LockOSThread() // never unlocked: the thread is replaced by exec
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	env := append(os.Environ(), "CORRIDOR_DATAPATH_REEXEC=1")
	return fmt.Errorf("re-execute in network namespace: %w", syscall.Exec(exe, os.Args, env))
}

// DefaultProcs is the number of threads a datapath process runs Go code on
// (GOMAXPROCS) when nothing else is asked, for a process whose runtime sees
// cpus CPUs: half of them, at least one. The process shares the host's CPUs
// with the kernel's side of the same packets (the TUN, forwarding to the
// guests' veths, the guests' TCP), which costs about as much per byte as
// the tunnel itself; wireguard-go hands every batch from goroutine to
// goroutine (TUN reader, encryption workers, sender), and with a P for each
// CPU those handoffs wake idle threads, which spin and take the CPU the
// kernel's side needs. On the 2-CPU benchmark machine one P gave the
// encrypted path less CPU per byte and more throughput (bench/RESULTS.md,
// "Data path, round 5"); larger machines were not measured.
func DefaultProcs(cpus int) int {
	return max(1, cpus/2)
}

// SetProcs sets the process's GOMAXPROCS: to procs when it is positive;
// otherwise, unless the GOMAXPROCS environment variable asks for a value
// (the runtime then has it already), to DefaultProcs of the CPUs the
// runtime sees (its cgroup-aware default). It returns that default and the
// value in effect.
func SetProcs(procs int) (cpus, inEffect int) {
	cpus = runtime.GOMAXPROCS(0)
	switch {
	case procs > 0:
		runtime.GOMAXPROCS(procs)
	case os.Getenv("GOMAXPROCS") == "":
		runtime.GOMAXPROCS(DefaultProcs(cpus))
	}
	return cpus, runtime.GOMAXPROCS(0)
}

// Serve creates the TUN device name with the MTU, serves it with
// wireguard-go and its UAPI socket until ctx ends or the device closes, then
// tears both down (which removes the TUN device and the socket).
func Serve(ctx context.Context, name string, mtu int, log *slog.Logger) error {
	tdev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return fmt.Errorf("create TUN %s: %w", name, err)
	}
	if real, err := tdev.Name(); err == nil {
		name = real
	}
	// Verbose lines are formatted only when they are logged (wireguard-go
	// itself discards them unless asked): keepalives and handshakes would
	// otherwise cost a Sprintf each for nothing.
	verbosef := device.DiscardLogf
	if log.Enabled(ctx, slog.LevelDebug) {
		verbosef = func(format string, args ...any) { log.Debug(fmt.Sprintf(format, args...)) }
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), &device.Logger{
		Verbosef: verbosef,
		Errorf:   func(format string, args ...any) { log.Error(fmt.Sprintf(format, args...)) },
	})
	defer dev.Close()

	f, err := ipc.UAPIOpen(name)
	if err != nil {
		if strings.Contains(err.Error(), "in use") {
			// /var/run/wireguard is machine-wide: a second agent on this
			// machine (simulated servers) asked for the same device name.
			return fmt.Errorf("open UAPI socket for %s: %w: another WireGuard device of that name runs on this machine (another agent?); give each agent on one machine its own --wg-name", name, err)
		}
		return fmt.Errorf("open UAPI socket for %s: %w", name, err)
	}
	uapi, err := ipc.UAPIListen(name, f)
	if err != nil {
		f.Close()
		return fmt.Errorf("listen on UAPI socket for %s: %w", name, err)
	}
	defer uapi.Close()

	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	log.Info("serving WireGuard device", "name", name, "mtu", mtu, "pid", os.Getpid())

	select {
	case <-ctx.Done():
		log.Info("stopping WireGuard device", "name", name)
		return nil
	case <-dev.Wait():
		return errors.New("WireGuard device closed")
	case err := <-acceptErr:
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		return fmt.Errorf("UAPI socket: %w", err)
	}
}
