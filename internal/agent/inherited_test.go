package agent

import (
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A descriptor the agent inherited open across exec (here: opened
// without O_CLOEXEC) is close-on-exec once the agent starts; red without
// closeInheritedOnExec.
func TestInheritedDescriptorsCloseOnExec(t *testing.T) {
	fd, err := syscall.Open(filepath.Join(t.TempDir(), "lock"), syscall.O_CREAT|syscall.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	cloexec := func() bool {
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			t.Fatal(err)
		}
		return fl&unix.FD_CLOEXEC != 0
	}
	if cloexec() {
		t.Fatal("the test's descriptor is close-on-exec from the start")
	}
	if err := closeInheritedOnExec(); err != nil {
		t.Fatal(err)
	}
	if !cloexec() {
		t.Errorf("descriptor %d still passes to the agent's children", fd)
	}
}
