package dataplane

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// UAPISocket is the UAPI socket of the wireguard-go device name: in a
// directory shared by the whole machine, whatever the network namespace.
func UAPISocket(name string) string { return filepath.Join(uapiDir, name+".sock") }

// soAcceptCon is the flags column of a listening socket in /proc/net/unix.
const soAcceptCon = "00010000"

// ErrServedElsewhere is wrapped by ServedElsewhere's error.
var ErrServedElsewhere = fmt.Errorf("dataplane: WireGuard device name served from another network namespace")

// ServedElsewhere returns an error wrapping ErrServedElsewhere when the
// wireguard-go UAPI socket of device name is served from another network
// namespace than the calling thread's: another host on this machine (a
// lab, another agent) runs a device of that name, and since the socket
// directory is shared by the machine, driving "our" device would drive
// its (its key, its peers), and starting ours would take its socket. A
// socket served in this namespace is this host's own device (adopted
// after a restart); nil too when nobody serves it.
func ServedElsewhere(name string) error {
	sock := UAPISocket(name)
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
	return fmt.Errorf("%w: %s is served from another network namespace on this machine (another agent?)", ErrServedElsewhere, sock)
}
