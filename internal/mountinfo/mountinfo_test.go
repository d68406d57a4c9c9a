package mountinfo

import (
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	text := `25 1 0:23 / /sys rw - sysfs sysfs rw
36 25 0:31 / /sys/fs/cgroup/cpu rw,relatime shared:13 master:2 - cgroup cgroup rw,cpu,cpuacct
40 25 0:35 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
41 25 0:36 / /run/netns/cor\040odd rw - nsfs nsfs rw
garbage line
`
	ms, err := Parse(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 4 {
		t.Fatalf("%d mounts: %+v", len(ms), ms)
	}
	if ms[1].Point != "/sys/fs/cgroup/cpu" || ms[1].FSType != "cgroup" || !slices.Contains(ms[1].Super, "cpu") {
		t.Errorf("optional fields confused the parse: %+v", ms[1])
	}
	if ms[2].FSType != "cgroup2" || ms[3].Point != "/run/netns/cor odd" {
		t.Errorf("got %+v and %+v", ms[2], ms[3])
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`a\040b`: "a b", `plain`: "plain", `tab\011`: "tab\t", `short\04`: `short\04`} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReadSelf(t *testing.T) {
	ms, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(ms, func(m Mount) bool { return m.Point == "/" }) {
		t.Fatal("no root mount in /proc/self/mountinfo")
	}
}
