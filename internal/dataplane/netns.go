package dataplane

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// inNetNS runs fn on a locked OS thread that has entered ns, then moves the
// thread back. It is for short work that needs the thread's namespace:
// /proc/sys/net, sockets created for the namespace, starting a child process
// that must live in it. Long-lived work uses handles bound to the namespace
// instead (see the package documentation of netlink and nftables handles).
func inNetNS(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and in the wrong namespace: the runtime
		// ends a locked thread when its goroutine exits without
		// unlocking, so it is never reused.
		return fmt.Errorf("return to original network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// sysctl is one /proc/sys/net key and the value it must have.
type sysctl struct {
	key   string // relative to /proc/sys, with slashes
	value string
}

// setSysctls writes, inside ns, every key whose value differs. It returns
// the keys it changed.
func setSysctls(ns netns.NsHandle, want []sysctl) ([]string, error) {
	var changed []string
	err := inNetNS(ns, func() error {
		for _, s := range want {
			p := filepath.Join("/proc/sys", s.key)
			cur, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("read sysctl %s: %w", s.key, err)
			}
			if strings.TrimSpace(string(cur)) == s.value {
				continue
			}
			if err := os.WriteFile(p, []byte(s.value), 0o644); err != nil {
				return fmt.Errorf("set sysctl %s=%s: %w", s.key, s.value, err)
			}
			changed = append(changed, s.key)
		}
		return nil
	})
	return changed, err
}
