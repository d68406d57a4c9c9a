package guest

import (
	"errors"
	"fmt"
	"strings"

	"github.com/corridor-dev/corridor/internal/compile"
)

// DefaultPath is the PATH a program gets unless its env sets one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// CommonChecks are the checks every runtime makes of a guest before
// touching the host: a task, an IPv4 address, a valid host interface name
// and a command. A runtime adds its own and wraps them with the task.
func CommonChecks(g compile.Guest) []error {
	var errs []error
	if g.Task == "" {
		errs = append(errs, errors.New("task is empty"))
	}
	if !g.Address.IsValid() || !g.Address.Is4() {
		errs = append(errs, fmt.Errorf("address %q is not an IPv4 address", g.Address))
	}
	if g.HostIf == "" || len(g.HostIf) > 15 || strings.ContainsAny(g.HostIf, "/ \t\n:") {
		errs = append(errs, fmt.Errorf("hostIf %q is not a valid interface name (1 to 15 characters, no '/', ':' or space)", g.HostIf))
	}
	if len(g.Spec.Command) == 0 || g.Spec.Command[0] == "" {
		errs = append(errs, errors.New("spec.command is empty"))
	}
	return errs
}
