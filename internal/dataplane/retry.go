package dataplane

import (
	"errors"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// How retryDump retries: at most dumpAttempts calls, pausing attempt ×
// dumpRetryPause before each new one (0.15 s in all at most).
const (
	dumpAttempts   = 5
	dumpRetryPause = 15 * time.Millisecond
)

// transientNetlink reports whether a netlink error may go away by asking
// again: a dump interrupted by a change, the kernel busy (nftables answers
// EBUSY while another transaction commits, as after a restart), a signal,
// or a socket buffer overrun on a large dump. Libraries that wrap with %v
// lose the errno, so their message is recognised too.
func transientNetlink(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, netlink.ErrDumpInterrupted) || errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EINTR) ||
		errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
		return true
	}
	msg := err.Error()
	for _, e := range []unix.Errno{unix.EBUSY, unix.EINTR, unix.ENOBUFS, unix.EAGAIN} {
		if strings.Contains(msg, e.Error()) {
			return true
		}
	}
	return false
}
