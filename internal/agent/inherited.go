package agent

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// closeInheritedOnExec marks every descriptor the agent inherited above
// stderr close-on-exec. Go opens its own files so, but one left open by
// whatever started the agent (a lock held by flock(1), a socket of a
// supervisor) would otherwise pass to everything the agent starts: the
// datapath process, guest-init and, through it, a task's program.
func closeInheritedOnExec() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list inherited descriptors: %w", err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		// The listing's own descriptor, closed by now, gets EBADF.
		unix.CloseOnExec(fd)
	}
	return nil
}
