package probe

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// inNetns runs fn on an OS thread that has entered the network namespace at
// path ("" runs fn where the caller is). Sockets fn opens belong to that
// namespace for their whole life, wherever they are used afterwards.
//
// fn runs on a goroutine of its own, locked to its thread: if the thread
// cannot be put back into its original namespace, the goroutine exits
// still locked, and the Go runtime then discards the thread rather than
// letting other goroutines run in the wrong namespace.
//
// (internal/capture holds the same helper: both packages are leaves by design.)
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	defer unix.Close(target)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread dies with this goroutine.
			errc <- fmt.Errorf("return from netns %s: %w", path, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
