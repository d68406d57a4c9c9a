package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/api"
)

// exitChanges is the exit status of a live plan (and apply --dry-run) that
// found something to change; 0 means nothing would change, 1 an error.
const exitChanges = 2

// livePlan asks the server what applying data (one spec file, named name
// in errors) would change, prints it, and returns an exitError with code
// exitChanges when something would change.
func livePlan(ctx context.Context, cmd *cobra.Command, c *api.Client, data []byte, name, format string, opts api.ApplyOptions) error {
	opts.File = name
	res, err := c.Plan(ctx, data, opts)
	if err != nil {
		return explain(err)
	}
	if format == formatTable || format == "" {
		if err := printLivePlan(cmd.OutOrStdout(), res); err != nil {
			return err
		}
	} else if err := printData(cmd.OutOrStdout(), format, res, nil); err != nil {
		return err
	}
	fmt.Fprintln(cmd.ErrOrStderr(), livePlanSummary(res))
	if res.Changed() {
		return &exitError{code: exitChanges, err: errSilent}
	}
	return nil
}

// errSilent is an exit status without a message: the output said it all.
var errSilent = silentError{}

type silentError struct{}

func (silentError) Error() string { return "" }

func livePlanSummary(res api.PlanResult) string {
	var add, move, rm int
	for _, c := range res.Changes {
		if c.Kind != "task" {
			continue
		}
		switch c.Action {
		case "add":
			add++
		case "move":
			move++
		case "remove":
			rm++
		}
	}
	var padd, prm int
	for _, p := range res.Paths {
		padd += len(p.Added)
		prm += len(p.Removed)
	}
	if !res.Changed() {
		return "plan: nothing would change (exit 0)"
	}
	return fmt.Sprintf("plan: %s to add, %d to move, %d to remove; %s added, %d removed; %s touched (exit %d: changes)",
		count(add, "task"), move, rm, count(padd, "path"), prm, count(len(res.Hosts), "host"), exitChanges)
}

// printLivePlan prints a live plan: the apps, the task changes with their
// reasons, the paths per class pair, the hosts touched.
func printLivePlan(w io.Writer, res api.PlanResult) error {
	t := NewTable(w)
	t.Header("app", "action", "revision")
	for _, a := range res.Apps {
		t.Row(a.Name, a.Action, revOrDash(a.Revision))
	}
	if err := t.Flush(); err != nil {
		return err
	}
	var tasks []api.PlanChange
	for _, c := range res.Changes {
		if c.Kind == "task" {
			tasks = append(tasks, c)
		}
	}
	fmt.Fprintln(w)
	if len(tasks) == 0 {
		fmt.Fprintln(w, "tasks: no change")
	} else {
		fmt.Fprintln(w, "tasks:")
		t = NewTable(w)
		t.Header("action", "task", "server", "why")
		for _, c := range tasks {
			srv := c.Server
			switch c.Action {
			case "move":
				srv = c.From + " -> " + c.Server
			case "remove":
				srv = c.From
			}
			_, why, _ := strings.Cut(c.Detail, ": ")
			t.Row(c.Action, c.Name, srv, why)
		}
		if err := t.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w)
	if len(res.Paths) == 0 {
		fmt.Fprintln(w, "paths: no change")
	} else {
		fmt.Fprintln(w, "paths, per class pair:")
		t = NewTable(w)
		t.Header("app", "from", "to", "change", "path", "servers", "kind", "ports")
		for _, p := range res.Paths {
			for _, r := range p.Removed {
				t.Row(p.App, p.FromClass, p.ToClass, "-", r.From+" -> "+r.To, r.FromServer+" -> "+r.ToServer, r.Kind, r.Ports)
			}
			for _, r := range p.Added {
				t.Row(p.App, p.FromClass, p.ToClass, "+", r.From+" -> "+r.To, r.FromServer+" -> "+r.ToServer, r.Kind, r.Ports)
			}
		}
		if err := t.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w)
	if len(res.Hosts) == 0 {
		fmt.Fprintln(w, "hosts touched: none")
		return nil
	}
	fmt.Fprintln(w, "hosts touched:")
	t = NewTable(w)
	t.Header("server", "what changes")
	for _, c := range res.Changes {
		if c.Kind == "host" {
			t.Row(c.Name, c.Detail)
		}
	}
	return t.Flush()
}
