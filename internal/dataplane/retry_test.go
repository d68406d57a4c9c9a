package dataplane

import (
	"errors"
	"fmt"
	"os"
	"testing"

	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// A dump that fails for a transient reason (the error seen after a server
// restart: "list nftables chains: netlink receive: device or resource
// busy") is asked again; a permanent error is reported at once, and a
// transient one that lasts after a few attempts.
func TestRetryDumpTransient(t *testing.T) {
	busy := &mdnetlink.OpError{Op: "receive", Err: os.NewSyscallError("recvmsg", unix.EBUSY)}
	for _, transient := range []error{
		busy, unix.EINTR, unix.ENOBUFS, unix.EAGAIN, netlink.ErrDumpInterrupted,
		fmt.Errorf("SendMessages: %v", busy), // wrapped with %v: the errno is lost, the message is not
	} {
		calls := 0
		out, err := retryDump(func() ([]int, error) {
			calls++
			if calls < 3 {
				return nil, transient
			}
			return []int{7}, nil
		})
		if err != nil || calls != 3 || len(out) != 1 {
			t.Errorf("%v: %d calls, %v, %v; want the third call's answer", transient, calls, out, err)
		}
	}

	calls := 0
	_, err := retryDump(func() ([]int, error) { calls++; return nil, unix.EPERM })
	if !errors.Is(err, unix.EPERM) || calls != 1 {
		t.Errorf("EPERM: %d calls, %v; want one call and the error", calls, err)
	}

	calls = 0
	_, err = retryDump(func() ([]int, error) { calls++; return nil, busy })
	if !errors.Is(err, unix.EBUSY) || calls != dumpAttempts {
		t.Errorf("lasting EBUSY: %d calls, %v; want %d calls and the error", calls, err, dumpAttempts)
	}
}
