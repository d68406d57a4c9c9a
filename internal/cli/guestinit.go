package cli

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/guest/nsguest"
)

func init() { register(newGuestInitCmd) }

// newGuestInitCmd is the hidden `corridor guest-init`: the agent starts
// its own binary so in a netns guest's new namespaces, and it seals the
// task's program and runs it (nsguest.InitMain). It is not for people.
func newGuestInitCmd() *cobra.Command {
	return &cobra.Command{
		Use:    nsguest.InitArg,
		Short:  "Seal and run a netns guest's program (started by the agent)",
		Hidden: true,
		Args:   cobra.NoArgs,
		// Flags would be the program's business: guest-init reads its
		// sandbox on fd 3 and takes none.
		DisableFlagParsing: true,
		Run: func(*cobra.Command, []string) {
			// The program's exit status is guest-init's, untouched.
			os.Exit(nsguest.InitMain())
		},
	}
}
