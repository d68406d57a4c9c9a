package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func init() { register(newDeleteCmd) }

func newDeleteCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "delete app NAME",
		Short:   "Delete an app; its tasks are stopped and its paths removed",
		Example: "  corridor delete app shop",
	}
	var cf *clientFlags
	app := &cobra.Command{
		Use:     "app NAME",
		Short:   "Delete an app",
		Example: "  corridor delete app shop",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			if err := c.DeleteApp(cmd.Context(), args[0]); err != nil {
				return explain(err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "app %s deleted\n", args[0])
			return nil
		},
	}
	cf = addClientFlags(app)
	cmd.AddCommand(app)
	return cmd
}
