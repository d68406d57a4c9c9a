package dist

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/testnet"
)

// dpkg -i, then -r, then -P, into a throwaway root (dpkg --root, its own
// database): install puts every file where docs/install.md says; remove
// leaves only the conffiles of /etc/corridor (as dpkg does for every
// package); purge leaves nothing. The maintainer scripts run outside the
// root (--force-script-chrootless, so the root needs no shell) and must do
// nothing there: they act only when DPKG_ROOT is empty.
func TestInstallRemoveLeavesOnlyNamedState(t *testing.T) {
	testnet.NeedRoot(t, "dpkg installs into a root of its own")
	path := buildDeb(t)
	root := t.TempDir()
	admin := filepath.Join(root, "var/lib/dpkg")
	for _, d := range []string{"info", "updates", "triggers"} {
		if err := os.MkdirAll(filepath.Join(admin, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"status", "available"} {
		if err := os.WriteFile(filepath.Join(admin, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dpkg := func(args ...string) {
		t.Helper()
		args = append([]string{"--root=" + root, "--force-script-chrootless"}, args...)
		if out, err := exec.Command("dpkg", args...).CombinedOutput(); err != nil {
			t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// left lists what is in the root besides dpkg's own database.
	left := func() []string {
		var out []string
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
			if rel == "/var/lib/dpkg" {
				return filepath.SkipDir
			}
			if !d.IsDir() {
				out = append(out, rel)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(out)
		return out
	}

	dpkg("-i", path)
	got := left()
	want := []string{Binary}
	for _, f := range Files {
		want = append(want, f.Dest)
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("after dpkg -i, %s is missing; installed: %v", w, got)
		}
	}
	if st, err := os.Stat(filepath.Join(root, Binary)); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("%s: %v, mode %v", Binary, err, st)
	}
	out, err := exec.Command(filepath.Join(root, Binary), "version").CombinedOutput()
	if err != nil {
		t.Errorf("the installed binary does not run: %v\n%s", err, out)
	}

	dpkg("-r", Package)
	if got, want := left(), []string{AgentConfig, ServerConfig}; !slices.Equal(got, want) {
		t.Errorf("after dpkg -r, left: %v, want only the conffiles %v", got, want)
	}
	dpkg("-P", Package)
	if got := left(); len(got) != 0 {
		t.Errorf("after dpkg -P, left: %v, want nothing", got)
	}
	if _, err := os.Stat(filepath.Join(root, ConfigDir)); err == nil {
		t.Errorf("after dpkg -P, %s is still there", ConfigDir)
	}
}
