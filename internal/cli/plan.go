package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

func init() { register(newPlanCmd) }

// Exit codes of `corridor plan`.
const (
	exitInvalid = 2 // the files cannot be read, decoded or validated
	exitNoFit   = 3 // valid input, but some task fits on no server
)

func newPlanCmd() *cobra.Command {
	var (
		files   []string
		servers string
		current string
		offline bool
		output  *string
		cf      *clientFlags
	)
	cmd := &cobra.Command{
		Use:   "plan -f APP.yaml | plan --offline -f APPS.yaml [-f MORE.yaml] --servers SERVERS.yaml",
		Short: "What applying would change on the running control plane, or an offline compile onto a servers file",
		Long: `Live (the default): plan sends APP.yaml to the control plane you are logged in to
(corridor login, or --server/--token/--ca) and shows what applying it would change
there, compiled against the stored apps, servers and placement: the tasks that
would be added, moved or removed with the reason for each, the paths added and
removed per class pair (with their kind: encrypted, plain or local), and the
hosts whose desired state would change, with what changes in them. Nothing is
stored. ` + "`corridor apply --dry-run -f APP.yaml`" + ` is the same thing.

Exit status of a live plan, for CI pipelines: 0 when nothing would change, 2
when something would, 1 on any error (an invalid spec, one that does not fit,
a server that does not answer).

Offline (--offline, or --servers given): plan runs Corridor's compiler on local
files, without a server and without root: it places every task of the apps on
the servers, allocates networks and addresses, and derives the paths between
tasks and each host's desired state.

The table output shows the placement (each task's server, address and the
reason for that server) and, per app, the path matrix: rows are the classes
that open connections, columns the classes they reach, and each cell says
"plain", "encrypted" or "denied", with the protocol and ports. -o json or
-o yaml prints the whole plan, hosts included.

With --current (a previous "corridor plan -o json", or a JSON list of
{task, server, address}), running tasks stay where they are and keep their
addresses, as the server does on every change: the plan then shows what a
change would move.

Exit status offline: 2 when a file cannot be read, decoded or validated, 3 when
some task fits on no server.`,
		Example: `  corridor plan -f shop.yaml                      # live, against the control plane
  corridor plan -f shop.yaml -o json || test $? -eq 2
  corridor plan --offline -f examples/shop.yaml --servers examples/servers.yaml
  corridor plan -f shop.yaml -f blog.yaml --servers servers.yaml -o json > plan.json
  corridor plan -f shop.yaml --servers servers.yaml --current plan.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return &exitError{code: exitInvalid, err: errors.New("no apps: give at least one -f APPS.yaml")}
			}
			if !offline && servers == "" {
				if len(files) > 1 || current != "" {
					return errors.New("a live plan takes one -f file, as apply does (--offline --servers SERVERS.yaml compiles several files, or with --current, without a server)")
				}
				data, name, err := readSpecFile(cmd.InOrStdin(), files[0])
				if err != nil {
					return err
				}
				c, err := cf.client()
				if err != nil {
					return fmt.Errorf("%w\n(or plan without a server: corridor plan --offline -f APPS.yaml --servers SERVERS.yaml)", err)
				}
				return livePlan(cmd.Context(), cmd, c, data, name, *output, api.ApplyOptions{})
			}
			if servers == "" {
				return &exitError{code: exitInvalid, err: errors.New("no servers: --offline needs --servers SERVERS.yaml")}
			}
			in, src, err := loadPlanInput(files, servers, current)
			if err != nil {
				return &exitError{code: exitInvalid, err: err}
			}
			plan, err := compile.Compile(in)
			if err != nil {
				return planError(err, src)
			}
			summarize(cmd.ErrOrStderr(), in, plan)
			if *output == formatTable || *output == "" {
				return printPlanTables(cmd.OutOrStdout(), in.Apps, plan)
			}
			return printData(cmd.OutOrStdout(), *output, plan, nil)
		},
	}
	cmd.Flags().StringArrayVarP(&files, "file", "f", nil, "app spec file (YAML, one or more App documents); repeat for more files")
	cmd.Flags().StringVar(&servers, "servers", "", "servers file (YAML, kind: ServerList)")
	cmd.Flags().StringVar(&current, "current", "", "current placement: a plan from -o json, or a JSON list of {task, server, address}")
	cmd.Flags().BoolVar(&offline, "offline", false, "compile on local files (needs --servers), without a server")
	cf = addClientFlags(cmd)
	output = addOutputFlag(cmd)
	return cmd
}

// appSource remembers which file, and where in it, each app came from, so
// that errors found after decoding still point into the files.
type appSource struct {
	file string
	data []byte
}

func loadPlanInput(files []string, serversFile, currentFile string) (compile.Input, map[string]appSource, error) {
	var in compile.Input
	src := map[string]appSource{}
	var errs []error
	locs := map[string]*spec.Locator{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		apps, fileLocs, err := spec.DecodeAppsLocated(f, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i, a := range apps {
			if prev, dup := src[a.Name]; dup {
				errs = append(errs, fmt.Errorf("%s: app %s is also defined in %s", locate(f, data, a.Name, ""), a.Name, prev.file))
				continue
			}
			src[a.Name] = appSource{f, data}
			locs[a.Name] = fileLocs[i]
			in.Apps = append(in.Apps, a)
		}
	}
	if len(errs) == 0 {
		// Across files: DecodeApps checked each file on its own.
		for _, e := range spec.ValidateApps(in.Apps) {
			errs = append(errs, fmt.Errorf("%s: %w", strings.Join(files, ", "), e))
		}
		// Imports, as the server checks them at apply: against the
		// apps of all the files.
		for i := range in.Apps {
			if l := locs[in.Apps[i].Name].Locate(spec.CheckImports(&in.Apps[i], in.Apps)); len(l) > 0 {
				errs = append(errs, l)
			}
		}
	}
	data, err := os.ReadFile(serversFile)
	if err != nil {
		errs = append(errs, err)
	} else if in.Servers, err = spec.DecodeServers(serversFile, data); err != nil {
		errs = append(errs, err)
	}
	if currentFile != "" {
		cur, nets, err := readCurrent(currentFile)
		if err != nil {
			errs = append(errs, err)
		}
		in.Current, in.Networks = cur, nets
	}
	return in, src, errors.Join(errs...)
}

// readCurrent reads a placement: a whole plan (whose tasks and networks
// are kept) or a bare list of assignments.
func readCurrent(file string) ([]compile.Assignment, map[string]netip.Prefix, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, err
	}
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '[' {
		var cur []compile.Assignment
		if err := strictJSON(data, &cur); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", file, err)
		}
		return cur, nil, nil
	}
	// Only what the next compile is given: a plan's paths and host
	// states are most of its bytes, and decoding them was wasted. A
	// missing or null task list tells another JSON object from a plan.
	var p struct {
		Tasks    *[]compile.Task      `json:"tasks"`
		Pending  []compile.Task       `json:"pending"`
		Networks []compile.AppNetwork `json:"networks"`
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, nil, fmt.Errorf("%s: not a plan (corridor plan -o json) nor a list of assignments: %w", file, err)
	}
	if p.Tasks == nil {
		return nil, nil, fmt.Errorf("%s: no \"tasks\": not a plan from corridor plan -o json", file)
	}
	cur := make([]compile.Assignment, 0, len(*p.Tasks)+len(p.Pending))
	for _, t := range *p.Tasks {
		cur = append(cur, compile.Assignment{Task: t.ID, Server: t.Server, Address: t.Address})
	}
	for _, t := range p.Pending {
		cur = append(cur, compile.Assignment{Task: t.ID, Address: t.Address})
	}
	nets := make(map[string]netip.Prefix, len(p.Networks))
	for _, n := range p.Networks {
		nets[n.App] = n.Network
	}
	return cur, nets, nil
}

func strictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// planError turns a compiler error into one that points into the files
// (file:line of the app or class at fault) and carries the exit code.
func planError(err error, src map[string]appSource) error {
	var pe *compile.PlacementError
	if errors.As(err, &pe) {
		if s, ok := src[pe.App]; ok {
			err = fmt.Errorf("%s: %w", locate(s.file, s.data, pe.App, pe.Class), err)
		}
		return &exitError{code: exitNoFit, err: err}
	}
	var ie *compile.InputError
	if errors.As(err, &ie) {
		if app, class, ok := fieldApp(ie.Field); ok {
			if s, ok := src[app]; ok {
				err = fmt.Errorf("%s: %w", locate(s.file, s.data, app, class), err)
			}
		}
	}
	return &exitError{code: exitInvalid, err: err}
}

// fieldApp reads the app and class out of a compiler field path such as
// "apps[shop].classes[db].tasks".
func fieldApp(field string) (app, class string, ok bool) {
	rest, ok := strings.CutPrefix(field, "apps[")
	if !ok {
		return "", "", false
	}
	app, rest, ok = strings.Cut(rest, "]")
	if !ok {
		return "", "", false
	}
	if r, found := strings.CutPrefix(rest, ".classes["); found {
		class, _, _ = strings.Cut(r, "]")
	}
	return app, class, true
}

// locate is "file:line" of the app's document, or of the class within it,
// found by reading the YAML again; just "file" when it cannot be found.
func locate(file string, data []byte, app, class string) string {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			return file
		}
		if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
			continue
		}
		top := doc.Content[0]
		if name := mapValue(top, "name"); name == nil || name.Value != app {
			continue
		}
		line := top.Line
		if classes := mapValue(top, "classes"); class != "" && classes != nil {
			for _, c := range classes.Content {
				if n := mapValue(c, "name"); n != nil && n.Value == class {
					line = c.Line
				}
			}
		}
		return file + ":" + strconv.Itoa(line)
	}
}

func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// summarize says on stderr what was compiled.
func summarize(w io.Writer, in compile.Input, p *compile.Plan) {
	var enc, plain, local, kept int
	for pa := range p.Paths.All() {
		switch {
		case pa.Local:
			local++
		case pa.Encrypt:
			enc++
		default:
			plain++
		}
	}
	for t := range p.Tasks.All() {
		if t.Reason.Kept {
			kept++
		}
	}
	fmt.Fprintf(w, "planned %s of %s on %s (%d kept where they run); %s: %d encrypted, %d plain, %d within a host\n",
		count(p.Tasks.Len(), "task"), count(len(in.Apps), "app"), count(len(in.Servers), "server"), kept,
		count(p.Paths.Len(), "path"), enc, plain, local)
}

// printPlanTables prints the placement, then one path matrix per app.
func printPlanTables(w io.Writer, apps []spec.App, p *compile.Plan) error {
	t := NewTable(w)
	t.Header("task", "server", "address", "reason")
	for tk := range p.Tasks.All() {
		t.Row(tk.ID, tk.Server, tk.Address.String(), tk.Reason.Chosen)
	}
	if err := t.Flush(); err != nil {
		return err
	}
	nets := map[string]string{}
	for _, n := range p.Networks {
		nets[n.App] = n.Network.String()
	}
	byName := map[string]*spec.App{}
	for i := range apps {
		byName[apps[i].Name] = &apps[i]
	}
	// Apps in plan order (by name), whatever the order of the files.
	for _, n := range p.Networks {
		a := byName[n.App]
		fmt.Fprintf(w, "\napp %s (network %s): paths from row class to column class\n", a.Name, nets[a.Name])
		err := writeClassMatrix(w, a.Classes, func(from, to string) string { return matrixCell(a, from, to) })
		if err != nil {
			return err
		}
	}
	return nil
}

// writeClassMatrix writes a class x class table, a row per source class
// and a column per destination class, each cell from cell.
func writeClassMatrix(w io.Writer, classes []spec.Class, cell func(from, to string) string) error {
	t := NewTable(w)
	// Class names as written: they are names, not column titles.
	head := []string{"FROM \\ TO"}
	for _, c := range classes {
		head = append(head, c.Name)
	}
	t.Row(head...)
	for _, from := range classes {
		row := []string{from.Name}
		for _, to := range classes {
			row = append(row, cell(from.Name, to.Name))
		}
		t.Row(row...)
	}
	return t.Flush()
}

// matrixCell is "denied", or "plain"/"encrypted" with every protocol and
// port the rules from one class to the other allow, e.g. "plain tcp/8080".
func matrixCell(a *spec.App, from, to string) string {
	var ports []string
	encrypt := false
	for _, r := range a.Rules {
		if r.From != from || r.To != to {
			continue
		}
		encrypt = r.Encrypt
		proto := spec.Protocol(r.Protocol)
		ps := make([]string, len(r.Ports))
		for i, p := range r.Ports {
			ps[i] = strconv.Itoa(p)
		}
		ports = append(ports, proto+"/"+strings.Join(ps, ","))
	}
	if len(ports) == 0 {
		return "denied"
	}
	kind := "plain"
	if encrypt {
		kind = "encrypted"
	}
	return kind + " " + strings.Join(ports, " ")
}

func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}
