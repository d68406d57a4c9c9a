package agent

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Bounds on a desired state. A state past them comes from a buggy or
// hostile server; the host keeps its last good state instead.
const (
	maxGuests = 1000
	maxPeers  = 100000
	maxRoutes = 1000000
)

// overlayGuard holds addresses no guest may take: they belong to the host's
// own plumbing or are not unicast.
var overlayGuard = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/3"),
}

// validateState checks a desired state before it is kept or applied: the
// whole state is refused on any error, so that the host stays on its last
// good state. Errors name the field.
func (a *Agent) validateState(st compile.HostState) error {
	if err := a.checkState(st); err != nil {
		return err
	}
	if st.KeyGeneration < 0 {
		return fmt.Errorf("keyGeneration: %d is negative", st.KeyGeneration)
	}
	if len(st.Guests) > maxGuests || len(st.Peers) > maxPeers || len(st.Routes) > maxRoutes {
		return fmt.Errorf("desired state too large: %d guests (max %d), %d peers (max %d), %d routes (max %d)",
			len(st.Guests), maxGuests, len(st.Peers), maxPeers, len(st.Routes), maxRoutes)
	}
	runtimes := a.cfg.Runtimes
	if runtimes == nil {
		runtimes = []string{spec.RuntimeNetns, spec.RuntimeVM}
	}
	seenTask := map[string]bool{}
	seenAddr := map[netip.Addr]string{}
	for i, g := range st.Guests {
		field := fmt.Sprintf("guests[%d]", i)
		switch {
		case g.Task == "" || seenTask[g.Task]:
			return fmt.Errorf("%s.task: %q is empty or given twice", field, g.Task)
		case !slices.Contains(runtimes, runtimeOf(g)):
			return fmt.Errorf("%s.spec.runtime: %q is not a runtime this host runs (%v)", field, g.Spec.Runtime, runtimes)
		case !g.Address.Is4():
			return fmt.Errorf("%s.address: %q is not an IPv4 address", field, g.Address)
		case g.Address == st.Address:
			return fmt.Errorf("%s.address: %s is the host's own underlay address", field, g.Address)
		case g.Resources.CPU < 0 || g.Resources.Memory < 0:
			return fmt.Errorf("%s.resources: negative request", field)
		}
		for _, p := range overlayGuard {
			if p.Contains(g.Address) {
				return fmt.Errorf("%s.address: %s is in %s, which no guest may use", field, g.Address, p)
			}
		}
		if other, ok := seenAddr[g.Address]; ok {
			return fmt.Errorf("%s.address: %s is also the address of %s", field, g.Address, other)
		}
		seenTask[g.Task], seenAddr[g.Address] = true, g.Task
	}
	if a.cfg.ValidateDataplane != nil {
		if err := a.cfg.ValidateDataplane(st); err != nil {
			return err
		}
	}
	return nil
}

func runtimeOf(g compile.Guest) string {
	if g.Spec.Runtime == "" {
		return spec.RuntimeNetns
	}
	return g.Spec.Runtime
}
