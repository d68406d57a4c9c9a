// Package testnet is for privileged tests: it skips a test, saying why,
// when the machine cannot run it, and makes named network namespaces that
// are removed when the test ends. Only _test.go files import it.
package testnet

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var seq atomic.Int32

// NeedRoot skips t under -short, or when not root; why says what the test
// makes (namespaces, links, cgroups...).
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if testing.Short() {
		t.Skip("privileged: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + why)
	}
}

// Namespaces makes len(roles) named network namespaces, unique to this
// test process ("cortst-<tag>-<pid>-<n>-<role>"), with lo up, removed when
// the test ends. It returns their names in the order of roles.
func Namespaces(t testing.TB, tag string, roles ...string) []string {
	t.Helper()
	NeedRoot(t, "creates network namespaces")
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip to build the test namespaces")
	}
	n := seq.Add(1)
	names := make([]string, len(roles))
	for i, r := range roles {
		name := fmt.Sprintf("cortst-%s-%d-%d-%s", tag, os.Getpid(), n, r)
		IP(t, "netns", "add", name)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
		IP(t, "-n", name, "link", "set", "lo", "up")
		names[i] = name
	}
	return names
}

// Path is where a namespace made by Namespaces is mounted.
func Path(name string) string { return "/var/run/netns/" + name }

// IP runs iproute2's ip and fails the test on error.
func IP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Netlink is a netlink handle in the named network namespace, closed (with
// the namespace handle) when the test ends.
func Netlink(t testing.TB, name string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open network namespace %s: %v", name, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	t.Cleanup(func() {
		h.Close()
		ns.Close()
	})
	return h
}
