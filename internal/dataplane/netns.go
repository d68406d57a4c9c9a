package dataplane

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/vishvananda/netns"
)

// sysctl is one /proc/sys/net key and the value it must have.
type sysctl struct {
	key   string // relative to /proc/sys, with slashes
	value string
}

// setSysctls writes, inside ns, every key whose value differs. It returns
// the keys it changed.
func setSysctls(ns netns.NsHandle, want []sysctl) ([]string, error) {
	var changed []string
	err := nsrun.DoHandle(ns, func() error {
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
