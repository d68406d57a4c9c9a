package dataplane

import (
	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/vishvananda/netns"
)

// sysctl is one /proc/sys/net key and the value it must have.
type sysctl = hostns.Setting

// setSysctls writes, inside ns, every key whose value differs. It returns
// the keys it changed.
func setSysctls(ns netns.NsHandle, want []sysctl) ([]string, error) {
	return hostns.Sysctls(ns, want)
}
