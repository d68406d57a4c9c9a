package agent

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/dataplane"
)

// soAcceptCon is the flags column of a listening socket in /proc/net/unix.
const soAcceptCon = "00010000"

// checkWireGuardName refuses a WireGuard device name whose wireguard-go
// UAPI socket is served from another network namespace: another agent on
// this machine runs a device of that name, and since the socket directory
// is shared by the machine, driving "our" device would drive its (its key,
// its peers). A socket served in this namespace is this host's own device
// (adopted after a restart).
func checkWireGuardName(name string) error {
	sock := dataplane.UAPISocket(name)
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return nil // nobody serves it
	}
	c.Close()
	// /proc/net/unix lists the sockets of this network namespace only.
	b, err := os.ReadFile("/proc/thread-self/net/unix")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		// Only the listening socket tells (flags __SO_ACCEPTCON): the
		// server's end of a connection is made in the namespace of the
		// client, ours included.
		if f := strings.Fields(line); len(f) >= 8 && f[3] == soAcceptCon && f[len(f)-1] == sock {
			return nil
		}
	}
	return fmt.Errorf("--wg-name %s: a WireGuard device of that name is served from another network namespace on this machine (%s: another agent?); its UAPI socket is shared by the machine, so give each agent on one machine its own --wg-name", name, sock)
}
