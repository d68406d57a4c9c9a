package agent

import (
	"fmt"

	"github.com/corridor-dev/corridor/internal/dataplane"
)

// checkWireGuardName refuses a WireGuard device name whose wireguard-go
// UAPI socket, or that of its second device of a key rotation
// (dataplane.SpareName: name+"+"), is served from another network
// namespace: another agent on this machine runs a device of that name,
// and since the socket directory is shared by the machine, driving "our"
// device would drive its (its key, its peers). A socket served in this
// namespace is this host's own device (adopted after a restart).
func checkWireGuardName(name string) error {
	for _, n := range []string{name, dataplane.SpareName(name)} {
		if err := dataplane.ServedElsewhere(n); err != nil {
			what := "a WireGuard device of that name"
			if n != name {
				what = fmt.Sprintf("the second WireGuard device of a key rotation, %s,", n)
			}
			return fmt.Errorf("--wg-name %s: %s is served from another network namespace on this machine (%s: another agent?); its UAPI socket is shared by the machine, so give each agent on one machine its own --wg-name (two names that share their first 14 characters share that of the second device)",
				name, what, dataplane.UAPISocket(n))
		}
	}
	return nil
}
