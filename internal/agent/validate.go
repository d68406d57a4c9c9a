package agent

import (
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// validateState checks a desired state before it is kept or applied, with
// the host-state contract's one Validate: the whole state is refused on any
// error (a newer major schema included), so that the host stays on its last
// good state. Errors name the field.
func (a *Agent) validateState(st compile.HostState) error {
	return hoststate.Validate(st, hoststate.Options{
		Host:        a.cfg.Name,
		Runtimes:    a.cfg.Runtimes,
		ServerAddrs: a.cfg.ServerAddrs,
		Dataplane:   a.cfg.ValidateDataplane,
	})
}
