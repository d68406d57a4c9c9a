package cli

import (
	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/flagfile"
)

// addConfigFlag gives a long-running command (server, agent) its
// --config FILE flag; example is the file the Debian package installs.
func addConfigFlag(cmd *cobra.Command, example string) {
	cmd.Flags().String(flagfile.Flag, "", "YAML file of flags: each key a flag name without dashes (e.g. "+example+"); a flag on the command line wins")
}

// configFile sets the command's flags from its --config file, if one is
// given, before cobra checks the required flags. skip names the flags the
// file may not set.
func configFile(cmd *cobra.Command, skip ...string) error {
	path, _ := cmd.Flags().GetString(flagfile.Flag)
	if path == "" {
		return nil
	}
	return flagfile.Apply(cmd.Flags(), path, skip...)
}
