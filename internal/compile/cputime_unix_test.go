//go:build unix

package compile

import "syscall"

// cpuTime is the CPU time (user + system) the process has used, in
// nanoseconds. On a shared machine wall time swings with the neighbours'
// load; CPU time does much less.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
