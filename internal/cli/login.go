package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/api"
)

func init() { register(newLoginCmd) }

func newLoginCmd() *cobra.Command {
	var server, token, caFile string
	var noVerify bool
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Store the server URL, admin token and CA for the other commands",
		Long: `login checks that the server answers with the given token, then stores the
URL, the token and the server's CA certificate in ~/.config/corridor/config.json
(mode 0600; $CORRIDOR_CONFIG overrides the path). The CA is the ca.crt file in
the server's data directory; the token is its admin.token file.`,
		Example: `  corridor login --server https://127.0.0.1:7443 \
    --token "$(cat /var/lib/corridor/admin.token)" --ca /var/lib/corridor/ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if server == "" || token == "" {
				return fmt.Errorf("--server and --token are required (the token is in the server's data directory, admin.token)")
			}
			cfg := clientConfig{Server: server, Token: token}
			if caFile != "" {
				b, err := os.ReadFile(caFile)
				if err != nil {
					return fmt.Errorf("--ca: %w", err)
				}
				if _, err := api.CAPool(b); err != nil {
					return fmt.Errorf("--ca %s: %w", caFile, err)
				}
				cfg.CA = string(b)
			}
			if !noVerify {
				tc, err := tlsFor([]byte(cfg.CA))
				if err != nil {
					return err
				}
				c, err := api.NewClient(server, token, tc)
				if err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
				defer cancel()
				if _, err := c.ListServers(ctx); err != nil {
					return fmt.Errorf("login check failed, nothing stored: %w", explain(err))
				}
			}
			p, err := saveClientConfig(cfg)
			if err != nil {
				return fmt.Errorf("store login: %w", err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "logged in to %s; stored in %s\n", server, p)
			return nil
		},
	}
	cmd.Flags().StringVar(&server, "server", "", "server URL, such as https://127.0.0.1:7443")
	cmd.Flags().StringVar(&token, "token", "", "admin token (the server's DATA_DIR/admin.token)")
	cmd.Flags().StringVar(&caFile, "ca", "", "CA certificate of the server (DATA_DIR/ca.crt)")
	cmd.Flags().BoolVar(&noVerify, "no-verify", false, "store without checking that the server answers")
	return cmd
}
