package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/api"
)

func init() { register(newLogsCmd) }

func newLogsCmd() *cobra.Command {
	var (
		follow, local bool
		lines         int
		stateDir      string
		cf            *clientFlags
	)
	cmd := &cobra.Command{
		Use:   "logs TASK",
		Short: "Print a task's log (stdout and stderr of its program)",
		Long: `logs prints the last lines of a task's log and, with -f, what it writes next
until interrupted. TASK is a task ID, "<app>/<class>/<index>".

By default the log comes through the server, which asks the agent of the
task's server (GET /v1/tasks/TASK/logs). With --local it is read from this
host's agent state directory instead (a netns guest's output or a VM's
console), which works while the server is away.`,
		Example: `  corridor logs shop/web/0
  corridor logs shop/web/0 -f --lines 20
  corridor logs --local --state-dir /var/lib/corridor/agent shop/db/0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			task := args[0]
			if strings.Count(task, "/") != 2 {
				return fmt.Errorf("TASK: %q is not a task ID such as shop/web/0", task)
			}
			if lines < 0 || lines > agent.MaxLogLines {
				return fmt.Errorf("--lines: %d is not from 0 to %d", lines, agent.MaxLogLines)
			}
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			out := cmd.OutOrStdout()
			if local {
				err := agent.TailTaskLog(ctx, stateDir, task, lines, follow, out)
				if errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("task %s has no log in %s: is it placed on this host? (%w)",
						task, strings.Join(agent.TaskLogDirs(stateDir), " or "), err)
				}
				return err
			}
			return remoteLogs(ctx, cf, task, lines, follow, out)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing what the task writes")
	cmd.Flags().IntVar(&lines, "lines", agent.DefaultLogLines, "how many of the last lines to print first")
	cmd.Flags().BoolVar(&local, "local", false, "read the log from this host's agent state, not through the server")
	cmd.Flags().StringVar(&stateDir, "state-dir", agent.DefaultStateDir, "the agent's state directory (with --local)")
	cf = addClientFlags(cmd)
	return cmd
}

// remoteLogs streams GET /v1/tasks/{task}/logs from the server, which
// proxies it to the agent of the task's server. The server, token and CA
// come from the flags, the environment and the login file, as for every
// user command.
func remoteLogs(ctx context.Context, cf *clientFlags, task string, lines int, follow bool, w io.Writer) error {
	server, token, tc, err := cf.resolve()
	if err != nil {
		return fmt.Errorf("%w (or use --local on the task's host)", err)
	}
	q := url.Values{"lines": {strconv.Itoa(lines)}}
	if follow {
		q.Set("follow", "1")
	}
	// The task ID holds slashes: escaped, it stays one path segment.
	u := strings.TrimRight(server, "/") + "/v1/tasks/" + url.PathEscape(task) + "/logs?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("server URL %q: %w", server, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return explain(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e api.Error
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return explain(&api.StatusError{Code: resp.StatusCode, Message: e.Error, Details: e.Details})
	}
	if _, err := io.Copy(w, resp.Body); err != nil && ctx.Err() == nil {
		return fmt.Errorf("log stream of %s: %w", task, err)
	}
	return nil
}
