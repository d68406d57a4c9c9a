package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

func init() { register(newApplyCmd) }

func newApplyCmd() *cobra.Command {
	var file string
	var ifMatch int64
	var wait, dryRun bool
	var timeout time.Duration
	var cf *clientFlags
	var out *string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or update the app(s) of a YAML file on the server",
		Long: `apply sends the app spec(s) of FILE (- for stdin) to the server, which
validates them as ` + "`corridor plan`" + ` does, checks that they can be placed on the current
servers, and stores them; the controller then places their tasks.

--if-match REVISION applies only if the app is still at that revision (0: only
if it does not exist yet); without it, concurrent applies land one after the
other and each is recorded as an event.

--wait then waits until the applied apps have settled: every task their specs
ask for is placed and running, every server's agent has applied its latest
desired state without errors, and every encrypted path of the apps between two
servers has had a WireGuard handshake. A line on stderr shows what it waits for
and how far it got. If that takes longer than --timeout, apply exits 1 and
lists what is still unsettled (the apps stay applied).

--dry-run stores nothing and shows what the apply would change, exactly as
` + "`corridor plan -f FILE`" + ` does; it exits 2 when something would change, 0
when nothing would, 1 on an error.`,
		Example: `  corridor apply -f examples/shop.yaml
  corridor apply -f shop.yaml --wait --timeout 5m
  corridor apply -f shop.yaml --if-match 42`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("-f FILE is required (- reads stdin)")
			}
			data, name, err := readSpecFile(cmd.InOrStdin(), file)
			if err != nil {
				return err
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			opts := api.ApplyOptions{File: name}
			if cmd.Flags().Changed("if-match") {
				opts.IfMatch = &ifMatch
			}
			if dryRun {
				if wait {
					return fmt.Errorf("--dry-run stores nothing: there is nothing to --wait for")
				}
				return livePlan(cmd.Context(), cmd, c, data, name, *out, opts)
			}
			res, err := c.ApplyApp(cmd.Context(), data, opts)
			if err != nil {
				return explain(err)
			}
			err = printData(cmd.OutOrStdout(), *out, res, func(t *Table) {
				t.Header("app", "action", "revision", "replaced")
				for _, a := range res.Apps {
					t.Row(a.Name, a.Action, fmt.Sprint(a.Revision), revOrDash(a.PreviousRevision))
				}
			})
			if err != nil || !wait {
				return err
			}
			names := make([]string, 0, len(res.Apps))
			for _, a := range res.Apps {
				names = append(names, a.Name)
			}
			_, err = waitSettled(cmd.Context(), c, names, timeout, cmd.ErrOrStderr())
			return err
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "app spec file (YAML; - for stdin)")
	cmd.Flags().Int64Var(&ifMatch, "if-match", 0, "apply only if the app is at this revision (0: must not exist)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "store nothing: show what the apply would change, as `corridor plan -f FILE` does (exit 2 when something would change, 0 when nothing would)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the apps' tasks run, every host applied its state and their encrypted paths have handshaken")
	cmd.Flags().DurationVar(&timeout, "timeout", defaultWaitTimeout, "how long --wait waits before it gives up (exit 1)")
	cf = addClientFlags(cmd)
	out = addOutputFlag(cmd)
	return cmd
}

func revOrDash(r int64) string {
	if r == 0 {
		return "-"
	}
	return fmt.Sprint(r)
}

// readSpecFile reads an app spec file (- for stdin) and returns its data
// and the name the server's errors give it. A file over the spec's size
// limit (spec.MaxFileSize) is refused here, before anything is sent: the
// server would refuse it too, after receiving it whole.
func readSpecFile(stdin io.Reader, file string) ([]byte, string, error) {
	tooBig := func(what string, size int64) error {
		is := "holds more than"
		if size >= 0 {
			is = fmt.Sprintf("is %d bytes, more than", size)
		}
		return fmt.Errorf("%s %s the spec's limit of %d bytes (1 MiB): nothing was sent; split its apps into smaller files",
			what, is, spec.MaxFileSize)
	}
	if file == "-" {
		data, err := io.ReadAll(io.LimitReader(stdin, spec.MaxFileSize+1))
		if err != nil {
			return nil, "", fmt.Errorf("read stdin: %w", err)
		}
		if len(data) > spec.MaxFileSize {
			return nil, "", tooBig("stdin", -1)
		}
		return data, "stdin", nil
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, "", fmt.Errorf("read %s: %w", file, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > spec.MaxFileSize {
		return nil, "", tooBig(file, fi.Size())
	}
	// A file that is not regular (a pipe) or grows while read.
	data, err := io.ReadAll(io.LimitReader(f, spec.MaxFileSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("read %s: %w", file, err)
	}
	if len(data) > spec.MaxFileSize {
		return nil, "", tooBig(file, -1)
	}
	return data, filepath.Base(file), nil
}
