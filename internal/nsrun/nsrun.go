// Package nsrun runs short pieces of work on an OS thread that has entered
// a network namespace, and brings the thread back afterwards.
//
// A network namespace belongs to a thread, not to a process or goroutine:
// whatever fn does that the kernel ties to the thread's namespace happens
// in the namespace it entered — sockets (which stay in that namespace for
// their whole life, wherever they are used afterwards), /proc/sys/net,
// TUNSETIFF, and children started with exec.Cmd.Start, which inherit the
// namespace of the thread that forks them. Long-lived work should use
// handles bound to the namespace (netlink.NewHandleAt, nftables.Conn with
// a NetNS) instead.
//
// Every call runs fn on a goroutine of its own, locked to its thread. If
// the thread cannot be put back into the namespace it started in, the
// goroutine exits still locked and the Go runtime then discards the thread
// rather than letting other goroutines run in the wrong namespace. Moving
// back matters even though discarding is safe: the main thread can never
// be discarded, and a thread left in a namespace keeps it alive.
package nsrun

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ownNetns is the namespace of the calling thread; a per-thread path,
// because /proc/self names the main thread's.
const ownNetns = "/proc/thread-self/ns/net"

// Do runs fn on a thread that has entered the network namespace at path,
// a namespace file such as /run/netns/<name> or /proc/<pid>/ns/net. An
// empty path runs fn where the caller is, on the caller's goroutine.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	defer unix.Close(target)
	return Run(func() error {
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		return fn()
	})
}

// DoHandle runs fn on a thread that has entered the network namespace ns.
// ns stays the caller's to close.
func DoHandle(ns netns.NsHandle, fn func() error) error {
	return Run(func() error {
		if err := unix.Setns(int(ns), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter netns: %w", err)
		}
		return fn()
	})
}

// DoNew runs fn on a thread that has entered a new, empty network
// namespace. The namespace goes when the thread leaves it unless fn made
// something hold it, e.g. a bind mount of /proc/thread-self/ns/net.
func DoNew(fn func() error) error {
	return Run(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare netns: %w", err)
		}
		return fn()
	})
}

// Run runs fn on a locked thread of its own and then moves that thread
// back into the network namespace it started in, whichever namespace fn
// moved it into (for example through netns.NewNamed, which enters the
// namespace it creates). Do, DoHandle and DoNew are Run with the entering
// step in front of fn.
//
// When the thread cannot be moved back, Run returns fn's error joined
// with that failure, and the thread is discarded.
func Run(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open(ownNetns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("return to own netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
