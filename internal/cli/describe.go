package cli

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/api"
)

func init() { register(newDescribeCmd) }

func newDescribeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "describe app|task|server NAME",
		Short: "Show one app, task or server in detail: placement reasons, paths, live status",
		Example: `  corridor describe app shop
  corridor describe task shop/db/0
  corridor describe server s1 -o json`,
	}
	cmd.AddCommand(
		describeCmd("app", "Show an app: spec, tasks with placement reasons, paths", "  corridor describe app shop", describeApp),
		describeCmd("task", "Show a task: where it runs, why there and not elsewhere, its state and paths", "  corridor describe task shop/web/0", describeTask),
		describeCmd("server", "Show a server: state, tasks, paths through it", "  corridor describe server s1", describeServer),
	)
	return cmd
}

func describeCmd(what, short, example string, run func(*cobra.Command, *api.Client, string, string) error) *cobra.Command {
	cmd := &cobra.Command{Use: what + " NAME", Short: short, Example: example, Args: cobra.ExactArgs(1)}
	cf := addClientFlags(cmd)
	out := addOutputFlag(cmd)
	cmd.RunE = func(c *cobra.Command, args []string) error {
		cl, err := cf.client()
		if err != nil {
			return err
		}
		return explain(run(c, cl, args[0], *out))
	}
	return cmd
}

type appDescription struct {
	App   api.App        `json:"app"`
	Tasks []api.TaskInfo `json:"tasks"`
	Paths []api.PathInfo `json:"paths"`
}

func describeApp(c *cobra.Command, cl *api.Client, name, out string) error {
	var d appDescription
	var err error
	if d.App, err = cl.GetApp(c.Context(), name); err != nil {
		return err
	}
	if d.Tasks, err = cl.ListTasks(c.Context(), api.Filter{App: name}); err != nil {
		return err
	}
	if d.Paths, err = cl.ListPaths(c.Context(), api.Filter{App: name}); err != nil {
		return err
	}
	return printData(c.OutOrStdout(), out, d, func(t *Table) {
		a := d.App
		t.Row("Name:", a.Name)
		t.Row("Revision:", fmt.Sprint(a.Revision))
		t.Row("Network:", dash(a.Network))
		t.Row("Updated:", ago(a.UpdatedAt)+" by "+a.UpdatedBy)
		for _, cl := range a.Spec.Classes {
			t.Row("Class:", fmt.Sprintf("%s: %s, %s, cpu %s, memory %s", cl.Name, count(cl.Tasks, "task"), cl.Guest.Runtime, cl.Resources.CPU, cl.Resources.Memory))
		}
		for _, r := range a.Spec.Rules {
			t.Row("Rule:", fmt.Sprintf("%s -> %s %s/%s %s", r.From, r.To, dash(r.Protocol), joinInts(r.Ports), pathKind(r.Encrypt, false)))
		}
		for _, e := range a.Spec.Exports {
			t.Row("Export:", fmt.Sprintf("%s: class %s %s/%s", e.Name, e.Class, dash(e.Protocol), joinInts(e.Ports)))
		}
		for _, im := range a.Spec.Imports {
			t.Row("Import:", fmt.Sprintf("%s as %s", im.Service, im.Alias()))
		}
		for _, u := range a.Unresolved {
			t.Row("Unresolved:", u)
		}
		for _, n := range a.Notes {
			t.Row("Note:", n)
		}
		t.Row("")
		t.Header("task", "server", "address", "state", "why there")
		for _, x := range d.Tasks {
			t.Row(x.ID, dash(x.Server), x.Address.String(), taskState(x), reasonLine(x))
		}
		t.Row("")
		writePaths(t, d.Paths)
		if a.Source != "" {
			t.Row("")
			t.Row("Source:")
			for _, l := range strings.Split(strings.TrimRight(a.Source, "\n"), "\n") {
				t.Row("  " + l)
			}
		}
	})
}

type taskDescription struct {
	Task  api.TaskInfo   `json:"task"`
	Paths []api.PathInfo `json:"paths"`
}

func describeTask(c *cobra.Command, cl *api.Client, id, out string) error {
	ts, err := cl.ListTasks(c.Context(), api.Filter{Task: id})
	if err != nil {
		return err
	}
	if len(ts) == 0 {
		return &api.StatusError{Code: http.StatusNotFound, Message: fmt.Sprintf("no task %s (task IDs are APP/CLASS/INDEX; see `corridor get tasks`)", id)}
	}
	d := taskDescription{Task: ts[0]}
	all, err := cl.ListPaths(c.Context(), api.Filter{App: d.Task.App})
	if err != nil {
		return err
	}
	for _, p := range all {
		if p.From == id || p.To == id {
			d.Paths = append(d.Paths, p)
		}
	}
	return printData(c.OutOrStdout(), out, d, func(t *Table) {
		x := d.Task
		t.Row("Task:", x.ID)
		t.Row("Server:", dash(x.Server))
		t.Row("Address:", x.Address.String())
		t.Row("State:", taskState(x))
		if x.Status != nil {
			t.Row("Runtime:", x.Status.Runtime)
			t.Row("Restarts:", fmt.Sprint(x.Status.Restarts))
			if x.Status.Message != "" {
				t.Row("Message:", x.Status.Message)
			}
		}
		if x.Pending != "" {
			t.Row("Pending:", x.Pending)
		} else {
			t.Row("Why here:", reasonLine(x))
		}
		for _, r := range x.Reason.Rejected {
			t.Row("Not "+r.Server+":", r.Why)
		}
		t.Row("")
		writePaths(t, d.Paths)
	})
}

type serverDescription struct {
	Server api.Server     `json:"server"`
	Tasks  []api.TaskInfo `json:"tasks"`
	Paths  []api.PathInfo `json:"paths"`
}

func describeServer(c *cobra.Command, cl *api.Client, name, out string) error {
	var d serverDescription
	var err error
	if d.Server, err = cl.GetServer(c.Context(), name); err != nil {
		return err
	}
	if d.Tasks, err = cl.ListTasks(c.Context(), api.Filter{Server: name}); err != nil {
		return err
	}
	if d.Paths, err = cl.ListPaths(c.Context(), api.Filter{Server: name}); err != nil {
		return err
	}
	return printData(c.OutOrStdout(), out, d, func(t *Table) {
		s := d.Server
		t.Row("Name:", s.Spec.Name)
		t.Row("State:", s.State)
		t.Row("Address:", s.Spec.Address)
		t.Row("WireGuard:", fmt.Sprintf("%s port %d", dash(s.Spec.PublicKey), s.Spec.WireGuardPort))
		key := fmt.Sprintf("generation %d", s.KeyGeneration)
		if r := s.Spec.Rotation; r != nil {
			key += fmt.Sprintf(", rotation to %d in phase %s since %s", r.Generation, r.Phase, ago(r.PhaseSince))
			if r.NextPublicKey != "" {
				key += ", next key " + r.NextPublicKey
			}
		} else if s.Spec.KeyGeneration > s.KeyGeneration {
			key += fmt.Sprintf(", rotation to %d asked (waits for its turn or its agent)", s.Spec.KeyGeneration)
		}
		t.Row("Key:", key)
		t.Row("Capacity:", fmt.Sprintf("cpu %s, memory %s", s.Spec.Capacity.CPU, s.Spec.Capacity.Memory))
		for k, v := range s.Spec.Labels {
			t.Row("Label:", k+"="+v)
		}
		t.Row("Joined:", ago(s.JoinedAt))
		t.Row("Last seen:", ago(s.LastSeen))
		if s.ControlPlane != "" {
			t.Row("Control plane:", s.ControlPlane)
		}
		t.Row("Revisions:", fmt.Sprintf("desired %d, applied %d", s.DesiredRevision, s.AppliedRevision))
		if s.FlowOffload != "" {
			t.Row("Flow offload:", flowOffloadLine(s.FlowOffload, s.OffloadedFlows))
		}
		for _, e := range s.Errors {
			t.Row("Error:", e)
		}
		t.Row("")
		t.Header("task", "address", "state", "why here")
		for _, x := range d.Tasks {
			t.Row(x.ID, x.Address.String(), taskState(x), reasonLine(x))
		}
		t.Row("")
		writePaths(t, d.Paths)
	})
}

// flowOffloadLine says what a server's flow offload is (api.Server.FlowOffload).
func flowOffloadLine(mode string, flows int) string {
	switch mode {
	case "on":
		return fmt.Sprintf("on, %d plain connections offloaded (nftables flowtable)", flows)
	case "off":
		return "off (agent --flow-offload=false)"
	case "unavailable":
		return "unavailable (the kernel has no nftables flowtables)"
	}
	return mode
}

func taskState(x api.TaskInfo) string {
	if x.Pending != "" {
		return "pending" // no server can take it (reasonLine says why)
	}
	if x.Status == nil {
		return "unreported"
	}
	return x.Status.State
}

func reasonLine(x api.TaskInfo) string {
	if x.Pending != "" {
		return "no server yet: " + x.Pending
	}
	r := x.Reason.Chosen
	if x.Reason.Kept {
		r = "kept: " + r
	}
	return r
}

func writePaths(t *Table, ps []api.PathInfo) {
	t.Header("from", "to", "ports", "kind", "servers", "handshake")
	for _, p := range ps {
		t.Row(p.From, p.To, p.Protocol+"/"+joinInts(p.Ports), pathKind(p.Path.Encrypt, p.Local), p.FromServer+"->"+p.ToServer, handshake(p))
	}
}
