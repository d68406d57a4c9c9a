package cli

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
)

func init() { register(newScaleCmd) }

func newScaleCmd() *cobra.Command {
	var cf *clientFlags
	cmd := &cobra.Command{
		Use:     "scale APP CLASS TASKS",
		Short:   "Set the number of tasks of one class of an app",
		Example: "  corridor scale shop web 4",
		Args:    cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[2])
			if err != nil || n < 0 {
				return fmt.Errorf("TASKS: %q is not a non-negative number", args[2])
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			res, err := c.Scale(cmd.Context(), args[0], args[1], n)
			if err != nil {
				return explain(err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "app %s class %s set to %d tasks (revision %d)\n", args[0], args[1], n, res.Apps[0].Revision)
			return nil
		},
	}
	cf = addClientFlags(cmd)
	return cmd
}
