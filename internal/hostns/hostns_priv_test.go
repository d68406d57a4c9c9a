package hostns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/corridor-dev/corridor/internal/nsrun"
	"golang.org/x/sys/unix"
)

// shadowEnv makes the test binary play the child of
// TestDeleteShadowedNamespace instead of running tests.
const shadowEnv = "CORRIDOR_HOSTNS_SHADOW_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(shadowEnv) != "" {
		if err := shadowChild(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// shadowChild reproduces, in its own mount namespace with a fresh tmpfs
// on /run, what an older Corridor left: a namespace mounted in the plain
// /run/netns, then /run/netns bound over itself, which hides that mount.
// A plain unmount and remove then fail with EBUSY; Delete must not.
func shadowChild() error {
	if err := unix.Mount("corhostns", "/run", "tmpfs", 0, ""); err != nil {
		return fmt.Errorf("tmpfs on /run: %w", err)
	}
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return err
	}
	path := Path("corshadow")
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		return err
	}
	if err := nsrun.DoNew(func() error {
		return unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "none", unix.MS_BIND, "")
	}); err != nil {
		return fmt.Errorf("mount the namespace: %w", err)
	}
	if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s over itself: %w", Dir, err)
	}
	// The old way fails here (the control: the shadow is real).
	_ = unix.Unmount(path, unix.MNT_DETACH)
	if err := os.Remove(path); !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("control: remove of a shadowed namespace gave %v, want EBUSY", err)
	}
	if err := Delete("corshadow"); err != nil {
		return fmt.Errorf("Delete: %w", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		return fmt.Errorf("%s still there after Delete: %v", path, err)
	}
	return nil
}

func TestDeleteShadowedNamespace(t *testing.T) {
	if os.Geteuid() != 0 || testing.Short() {
		t.Skip("needs root (mount namespaces and mounts); skipped under -short")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run", "^$")
	cmd.Env = append(os.Environ(), shadowEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}
