package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/compile"
)

const planApps = `apiVersion: corridor/v1
kind: App
name: shop
classes:
  - name: web
    tasks: 2
    guest: {runtime: netns, command: [sleep, infinity]}
    resources: {cpu: 100m, memory: 64Mi}
  - name: db
    tasks: 1
    guest: {runtime: netns, command: [sleep, infinity]}
    resources: {cpu: 500m, memory: 256Mi}
rules:
  - {from: web, to: web, ports: [7946], protocol: udp, encrypt: false}
  - {from: web, to: db, ports: [5432, 5433], encrypt: true}
`

const planServers = `apiVersion: corridor/v1
kind: ServerList
servers:
  - {name: s1, address: 198.18.0.11, capacity: {cpu: 2, memory: 4Gi}}
  - {name: s2, address: 198.18.0.12, capacity: {cpu: 2, memory: 4Gi}}
`

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func runPlan(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := NewRoot(&out, &errb)
	root.SetArgs(append([]string{"plan"}, args...))
	err = root.Execute()
	return out.String(), errb.String(), err
}

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if err != nil {
		return 1 // as Main exits
	}
	return 0
}

func TestPlanTable(t *testing.T) {
	dir := writeFiles(t, map[string]string{"shop.yaml": planApps, "servers.yaml": planServers})
	out, talk, err := runPlan(t, "-f", filepath.Join(dir, "shop.yaml"), "--servers", filepath.Join(dir, "servers.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"TASK", "REASON", "shop/web/0", "shop/web/1", "shop/db/0", "runs no task of shop yet",
		"app shop (network 100.64.0.0/24)",
		"web        plain udp/7946  encrypted tcp/5432,5433",
		"db         denied          denied",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(talk, "planned 3 tasks of 1 app on 2 servers") {
		t.Errorf("stderr: %q", talk)
	}
	if strings.Contains(out, "planned") {
		t.Error("talk went to stdout")
	}
}

func TestPlanJSONAndCurrent(t *testing.T) {
	dir := writeFiles(t, map[string]string{"shop.yaml": planApps, "servers.yaml": planServers})
	args := []string{"-f", filepath.Join(dir, "shop.yaml"), "--servers", filepath.Join(dir, "servers.yaml")}
	out, _, err := runPlan(t, append(args, "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	var p compile.Plan
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatal(err)
	}
	if p.Tasks.Len() != 3 || len(p.Hosts) != 2 || p.Paths.Len() != 4 {
		t.Fatalf("plan: %d tasks, %d hosts, %d paths", p.Tasks.Len(), len(p.Hosts), p.Paths.Len())
	}
	// Feeding the plan back as --current keeps every task.
	cur := filepath.Join(dir, "plan.json")
	if err := os.WriteFile(cur, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	out2, _, err := runPlan(t, append(args, "-o", "json", "--current", cur)...)
	if err != nil {
		t.Fatal(err)
	}
	var p2 compile.Plan
	if err := json.Unmarshal([]byte(out2), &p2); err != nil {
		t.Fatal(err)
	}
	was := p.Tasks.Flat()
	for i, tk := range p2.Tasks.Flat() {
		if !tk.Reason.Kept || tk.Server != was[i].Server || tk.Address != was[i].Address {
			t.Errorf("%s not kept: %+v", tk.ID, tk)
		}
	}
	// A bare list of assignments works too.
	list := `[{"task": "shop/db/0", "server": "s2", "address": "100.64.0.9"}]`
	if err := os.WriteFile(cur, []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	out3, _, err := runPlan(t, append(args, "-o", "yaml", "--current", cur)...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out3, "address: 100.64.0.9") || !strings.Contains(out3, "kept on s2") {
		t.Errorf("yaml plan does not keep shop/db/0:\n%s", out3)
	}
}

func TestPlanErrors(t *testing.T) {
	bad := strings.Replace(planApps, "tasks: 1", "tasks: 1\n    colour: red", 1)
	huge := strings.Replace(planApps, "cpu: 500m", "cpu: 3", 1)
	dir := writeFiles(t, map[string]string{
		"shop.yaml": planApps, "bad.yaml": bad, "huge.yaml": huge, "servers.yaml": planServers,
		"cur.json": `{"nothing": 1}`,
	})
	f := func(n string) string { return filepath.Join(dir, n) }
	cases := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"decode", []string{"-f", f("bad.yaml"), "--servers", f("servers.yaml")}, 2, []string{"bad.yaml:11", "colour"}},
		{"no fit", []string{"-f", f("huge.yaml"), "--servers", f("servers.yaml")}, 3,
			[]string{"huge.yaml:9: app shop class db: no server fits task shop/db/0", "closest is s1", "short cpu"}},
		{"duplicate app", []string{"-f", f("shop.yaml"), "-f", f("shop.yaml"), "--servers", f("servers.yaml")}, 2, []string{"also defined"}},
		{"offline without servers", []string{"--offline", "-f", f("shop.yaml")}, 2, []string{"--servers"}},
		{"live without a server", []string{"-f", f("shop.yaml")}, 1, []string{"no server configured", "--offline"}},
		{"live with two files", []string{"-f", f("shop.yaml"), "-f", f("shop.yaml")}, 1, []string{"one -f file", "--offline"}},
		{"no apps", []string{"--servers", f("servers.yaml")}, 2, []string{"-f"}},
		{"missing file", []string{"-f", f("nope.yaml"), "--servers", f("servers.yaml")}, 2, []string{"nope.yaml"}},
		{"bad current", []string{"-f", f("shop.yaml"), "--servers", f("servers.yaml"), "--current", f("cur.json")}, 2, []string{"cur.json", "not a plan"}},
		{"bad output", []string{"-f", f("shop.yaml"), "--servers", f("servers.yaml"), "-o", "xml"}, 0, []string{"unknown output format"}},
		{"import of an app in no file", []string{"-f", exampleFile("shop-ledger.yaml"), "--servers", f("servers.yaml")}, 2,
			[]string{"shop-ledger.yaml:" + lineWith(t, exampleFile("shop-ledger.yaml"), "service: ledger/accounts") + ":5: imports[0].service: no app \"ledger\""}},
	}
	t.Setenv("CORRIDOR_CONFIG", filepath.Join(t.TempDir(), "none.json"))
	t.Setenv("CORRIDOR_SERVER", "")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, _, err := runPlan(t, c.args...)
			if err == nil {
				t.Fatalf("no error; output:\n%s", out)
			}
			if c.code != 0 && exitCode(err) != c.code {
				t.Errorf("exit code %d, want %d (%v)", exitCode(err), c.code, err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func exampleFile(name string) string { return filepath.Join("..", "..", "examples", name) }

// lineWith is the line number, as text, of the first line of file
// holding sub.
func lineWith(t *testing.T, file, sub string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(b), sub)
	if i < 0 {
		t.Fatalf("%s has no %q", file, sub)
	}
	return strconv.Itoa(1 + strings.Count(string(b)[:i], "\n"))
}

// The importer and its exporter planned together: the import resolves
// and the plan has the paths across apps.
func TestPlanAppToApp(t *testing.T) {
	dir := writeFiles(t, map[string]string{"servers.yaml": planServers})
	out, _, err := runPlan(t, "-f", exampleFile("ledger.yaml"), "-f", exampleFile("shop-ledger.yaml"),
		"--servers", filepath.Join(dir, "servers.yaml"), "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var p compile.Plan
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatal(err)
	}
	n := 0
	for pa := range p.Paths.All() {
		if pa.App == "shop" && pa.ToApp == "ledger" && pa.FromClass == "app" && pa.ToClass == "api" {
			n++
		}
	}
	if n != 4 || len(p.Unresolved) != 0 {
		t.Fatalf("%d paths from shop's app to ledger's api (want 4), unresolved %+v", n, p.Unresolved)
	}
}
