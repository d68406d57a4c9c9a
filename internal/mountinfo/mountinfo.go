// Package mountinfo reads /proc/self/mountinfo: where file systems are
// mounted and of what type. The guest runtime finds its cgroup hierarchies
// with it, and the lab the mounts it must undo.
package mountinfo

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Mount is one line of mountinfo.
type Mount struct {
	Point  string   // mount point, unescaped
	FSType string   // e.g. cgroup, cgroup2, tmpfs, nsfs
	Super  []string // super options, e.g. [rw cpu cpuacct] for a v1 cgroup
}

// Read parses this process's mount table.
func Read() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	defer f.Close()
	return Parse(f)
}

// IsMountPoint tells whether path is a mount point in the calling
// thread's mount namespace (/proc/thread-self: a thread that unshared its
// mount namespace sees its own table). Unlike comparing st_dev with the
// parent's, it sees a bind mount of a directory onto itself, as
// `ip netns` makes of /run/netns.
func IsMountPoint(path string) bool {
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	ms, err := Parse(f)
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.Point == path {
			return true
		}
	}
	return false
}

// Parse parses mountinfo text; malformed lines are skipped.
//
//	36 25 0:31 / /sys/fs/cgroup/cpu rw,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
func Parse(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// Optional fields sit before " - ", so the file system type is
		// found after the separator, not by position.
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 1 {
			continue
		}
		m := Mount{Point: Unescape(pf[4]), FSType: qf[0]}
		if len(qf) >= 3 {
			m.Super = strings.Split(qf[2], ",")
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	return out, nil
}

// Unescape undoes mountinfo's octal escapes (\040 for a space).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
