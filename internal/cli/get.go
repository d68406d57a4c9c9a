package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/api"
)

func init() { register(newGetCmd) }

func newGetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get apps|servers|tasks|paths|events",
		Short: "List apps, servers, tasks, paths or events from the server",
		Example: `  corridor get apps
  corridor get tasks --app shop
  corridor get paths -o json`,
	}
	cmd.AddCommand(
		getCmd("apps", "List apps", "  corridor get apps", nil, func(c *cobra.Command, cl *api.Client, _ api.Filter, out string) error {
			apps, err := cl.ListApps(c.Context())
			if err != nil {
				return err
			}
			return printData(c.OutOrStdout(), out, apps, func(t *Table) {
				t.Header("name", "classes", "tasks", "placed", "network", "revision", "updated")
				for _, a := range apps {
					n := 0
					for _, cl := range a.Spec.Classes {
						n += cl.Tasks
					}
					t.Row(a.Name, fmt.Sprint(len(a.Spec.Classes)), fmt.Sprint(n), fmt.Sprint(a.Placed), dash(a.Network), fmt.Sprint(a.Revision), ago(a.UpdatedAt)+" by "+a.UpdatedBy)
				}
			})
		}),
		getCmd("servers", "List servers", "  corridor get servers\n  corridor get servers --wait-ready 3", []string{"ready"}, func(c *cobra.Command, cl *api.Client, _ api.Filter, out string) error {
			if err := waitReadyFlag(c, cl); err != nil {
				return err
			}
			ss, err := cl.ListServers(c.Context())
			if err != nil {
				return err
			}
			return printData(c.OutOrStdout(), out, ss, func(t *Table) {
				t.Header("name", "state", "address", "tasks", "desired", "applied", "key", "last seen", "errors")
				for _, s := range ss {
					// The key's generation, and the one asked while a
					// rotation is under way.
					key := fmt.Sprint(s.KeyGeneration)
					if s.Spec.KeyGeneration > s.KeyGeneration {
						key += "->" + fmt.Sprint(s.Spec.KeyGeneration)
					}
					// A host that applied a state the control plane did
					// not sign (its digest differs at the same revision).
					applied := fmt.Sprint(s.AppliedRevision)
					if s.Tampered != "" {
						applied += " TAMPERED"
					}
					t.Row(s.Spec.Name, s.State, s.Spec.Address, fmt.Sprint(s.Tasks), fmt.Sprint(s.DesiredRevision), applied, key, ago(s.LastSeen), fmt.Sprint(len(s.Errors)))
				}
			})
		}),
		getCmd("tasks", "List placed tasks with their live state", "  corridor get tasks --app shop", []string{"app", "server"}, func(c *cobra.Command, cl *api.Client, f api.Filter, out string) error {
			ts, err := cl.ListTasks(c.Context(), f)
			if err != nil {
				return err
			}
			return printData(c.OutOrStdout(), out, ts, func(t *Table) {
				t.Header("task", "server", "address", "state", "restarts", "reason")
				for _, x := range ts {
					state, restarts := "unreported", "-"
					if x.Status != nil {
						state, restarts = x.Status.State, fmt.Sprint(x.Status.Restarts)
					}
					t.Row(x.ID, x.Server, x.Address.String(), state, restarts, taskReason(x))
				}
			})
		}),
		getCmd("paths", "List paths between tasks with their live state", "  corridor get paths --app shop", []string{"app", "server"}, func(c *cobra.Command, cl *api.Client, f api.Filter, out string) error {
			ps, err := cl.ListPaths(c.Context(), f)
			if err != nil {
				return err
			}
			return printData(c.OutOrStdout(), out, ps, func(t *Table) {
				t.Header("from", "to", "ports", "kind", "servers", "handshake", "rx", "tx")
				for _, p := range ps {
					rx, tx := "-", "-"
					if p.Peer != nil {
						rx, tx = fmt.Sprint(p.Peer.RxBytes), fmt.Sprint(p.Peer.TxBytes)
					}
					t.Row(p.From, p.To, p.Protocol+"/"+joinInts(p.Ports), pathKind(p.Path.Encrypt, p.Local), p.FromServer+"->"+p.ToServer, handshake(p), rx, tx)
				}
			})
		}),
		getCmd("events", "List the newest events (who did what, when)", "  corridor get events --limit 20", []string{"limit"}, func(c *cobra.Command, cl *api.Client, f api.Filter, out string) error {
			limit := 0
			if v, _ := c.Flags().GetInt("limit"); v > 0 {
				limit = v
			}
			evs, err := cl.ListEvents(c.Context(), limit)
			if err != nil {
				return err
			}
			return printData(c.OutOrStdout(), out, evs, func(t *Table) {
				t.Header("time", "who", "action", "object", "message")
				for _, e := range evs {
					t.Row(e.Time.Local().Format(time.DateTime), e.Who, e.Action, dash(e.Object), e.Message)
				}
			})
		}),
	)
	return cmd
}

// getCmd builds one `get` subcommand with client flags, -o and filters.
func getCmd(name, short, example string, filters []string, run func(*cobra.Command, *api.Client, api.Filter, string) error) *cobra.Command {
	var f api.Filter
	cmd := &cobra.Command{Use: name, Short: short, Example: example, Args: cobra.NoArgs}
	cf := addClientFlags(cmd)
	out := addOutputFlag(cmd)
	for _, fl := range filters {
		switch fl {
		case "app":
			cmd.Flags().StringVar(&f.App, "app", "", "only this app")
		case "server":
			cmd.Flags().StringVar(&f.Server, "on", "", "only this server")
		case "limit":
			cmd.Flags().Int("limit", 100, "how many of the newest events")
		case "ready":
			cmd.Flags().Int("wait-ready", 0, "first wait until at least this many servers are ready")
			cmd.Flags().Duration("timeout", time.Minute, "how long --wait-ready waits")
		}
	}
	cmd.RunE = func(c *cobra.Command, _ []string) error {
		cl, err := cf.client()
		if err != nil {
			return err
		}
		return explain(run(c, cl, f, *out))
	}
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}

func pathKind(encrypt, local bool) string {
	switch {
	case local:
		return "local"
	case encrypt:
		return "encrypted"
	}
	return "plain"
}

func handshake(p api.PathInfo) string {
	if !p.Path.Encrypt || p.Local {
		return "-"
	}
	if p.HandshakeAge < 0 {
		return "none"
	}
	return (time.Duration(p.HandshakeAge * float64(time.Second))).Round(time.Second).String() + " ago"
}
