package dataplane

// The guards that keep a packet of an encrypted pair from ever leaving in
// plain, named for the mutation checks (scripts/mutation.sh): built with
// the tag corridor_mutation and run with CORRIDOR_MUTATE=<guard>, the data
// plane leaves that one guard out, and the tests that prove it must fail.
// Without the tag, guardOff is a constant false and the hook does not
// exist in the binary. docs/architecture.md lists each guard with the
// tests that catch its absence.
const (
	// GuardForwardDrops: the forward chain's path checks (a guest's packet
	// marked for one tunnel but routed out of another device, or not
	// marked at all and leaving the host, is dropped).
	GuardForwardDrops = "forward-drops"
	// GuardUnreachableRoutes: the unreachable default route ending each of
	// our routing tables (a missing route fails there instead of falling
	// through to the main table's default route).
	GuardUnreachableRoutes = "unreachable-routes"
	// GuardDeviceCheck: a packet from a tunnel reaches a guest only for
	// a connection of that tunnel's path (the forward chain's ct mark
	// check, before the conntrack accept, for every packet), and a new
	// connection of an encrypted pair only from the WireGuard device.
	GuardDeviceCheck = "device-check"
	// GuardVTEPSource: a VXLAN frame is taken only from a known VTEP and
	// with an inner source that runs behind that VTEP (the input chain).
	GuardVTEPSource = "vtep-source"
	// GuardGuestRoutes: the ip rules that send every packet from a guest
	// interface that no fwmark rule took to table TableGuest (throw for
	// local guests, unreachable otherwise): fail closed without nftables.
	GuardGuestRoutes = "guest-routes"
	// GuardFwmarkRule: the ip rule sending packets marked for encryption
	// to the encrypted routing table.
	GuardFwmarkRule = "fwmark-rule"
	// GuardEgressSNAT: the source NAT of egress to the host's underlay
	// address (egress.go); without it a guest's overlay address would
	// appear on the underlay (and outside services could not answer).
	GuardEgressSNAT = "egress-snat"
	// GuardIngressSNAT: the source NAT of a published port's leg to a
	// remote backend to the entry host's address in the app network
	// (ingress.go); without it the backend's reply goes to the client's
	// address, which its host does not route back through the entry host.
	GuardIngressSNAT = "ingress-snat"
	// GuardGuestSource: a guest's IPv4 packet whose source is not the
	// guest's address is dropped in prerouting, before anything accepts
	// it (nftrules.go guestSource); the kernel's reverse-path check is
	// skipped on guest interfaces (accept_local=1), so without this guard
	// a guest could send as another guest or as the host.
	GuardGuestSource = "guest-source"
)

// Guards lists every guard, for the mutation driver.
var Guards = []string{GuardForwardDrops, GuardUnreachableRoutes, GuardDeviceCheck, GuardFwmarkRule, GuardVTEPSource, GuardGuestRoutes, GuardEgressSNAT, GuardIngressSNAT, GuardGuestSource}
