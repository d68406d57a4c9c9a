package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/probe"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/verify"
)

func init() { register(newDemoCmd) }

type demoOptions struct {
	lab     lab.Options
	file    string
	keep    bool
	timeout time.Duration
}

func newDemoCmd() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole method on this machine: a lab, the shop app, its paths proved with real traffic",
		Long: `demo brings up a lab of three servers made of network namespaces, applies the
shop app (web -> app plain on 8080, app -> db encrypted on 5432, nothing else),
waits until it has settled (every task runs, every host has applied its state,
every encrypted path has had a WireGuard handshake: what apply --wait waits
for), proves the policy with real traffic (corridor verify), and prints where
each task runs and the path matrix with live WireGuard handshakes and bytes.

The lab is removed when demo ends, or on Ctrl-C, unless --keep. Needs root.`,
		Example: "  sudo corridor demo\n  sudo corridor demo --keep     # then explore, and `corridor lab down`",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return errors.New("demo needs root (it makes network namespaces, links and a WireGuard device): run it with sudo")
			}
			return runDemo(cmd, o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.lab.Servers, "servers", lab.DefaultServers, "number of simulated servers")
	f.StringVar(&o.lab.Dir, "dir", lab.DefaultDir(), "lab directory ($CORRIDOR_LAB_DIR)")
	f.StringVar(&o.lab.Prefix, "prefix", lab.DefaultPrefix, "prefix of the lab's namespace names; two labs on one machine need two prefixes")
	f.Var(prefixValue{&o.lab.Underlay}, "underlay", "underlay subnet of the lab (default "+lab.DefaultUnderlay.String()+")")
	f.StringVar(&o.file, "file", "", "app spec to apply instead of the built-in examples/shop.yaml")
	f.BoolVar(&o.keep, "keep", false, "leave the lab up at the end, to explore it")
	f.DurationVar(&o.timeout, "timeout", 3*time.Minute, "how long to wait for the app to settle")
	addHostsFlags(cmd, &o.lab)
	return cmd
}

func runDemo(cmd *cobra.Command, o demoOptions) (err error) {
	out, talk := cmd.OutOrStdout(), cmd.ErrOrStderr()
	doc, name := examples.Shop, "examples/shop.yaml"
	if o.file != "" {
		if doc, err = os.ReadFile(o.file); err != nil {
			return fmt.Errorf("--file: %w", err)
		}
		name = o.file
	}
	apps, err := spec.DecodeApps(name, doc)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	ctx, cancel := interruptible(cmd.Context())
	defer cancel()

	step(talk, "bringing up a lab of %d servers in %s", max(o.lab.Servers, 1), o.lab.Dir)
	o.lab.Logger = quietLogger(talk)
	l, err := lab.Up(ctx, o.lab)
	defer func() {
		if o.keep && err == nil {
			return
		}
		if l == nil {
			return
		}
		step(talk, "removing the lab (keep it next time with --keep)")
		exe, _ := os.Executable()
		// A fresh context: the demo's own may have been cancelled by Ctrl-C.
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer dcancel()
		if derr := lab.Down(dctx, lab.DownOptions{Dir: l.Dir, Binary: exe, Logger: quietLogger(talk)}); derr != nil {
			fmt.Fprintf(talk, "lab down: %v\n  remove what is left with: corridor lab down --dir %s\n", derr, l.Dir)
		}
	}()
	if err != nil {
		return err
	}
	c, err := l.Client()
	if err != nil {
		return err
	}

	step(talk, "applying %s", name)
	if _, err := c.ApplyApp(ctx, doc, api.ApplyOptions{File: name}); err != nil {
		return explain(err)
	}
	names := make([]string, len(apps))
	for i, a := range apps {
		names[i] = a.Name
	}
	if _, err := waitSettled(ctx, c, names, o.timeout, talk); err != nil {
		return err
	}

	var failed []string
	for _, a := range apps {
		step(talk, "verifying %s with real traffic (corridor verify %s)", a.Name, a.Name)
		rep, err := verify.RunFleet(ctx, c, a.Name, verify.Options{Timeout: 2 * time.Second})
		if err != nil {
			return explain(err)
		}
		// Published ports, from the lab's outside client.
		if err := ingressChecks(ctx, c, l, rep, verify.Options{Timeout: 2 * time.Second}); err != nil {
			return explain(err)
		}
		printDemoVerify(out, rep)
		if !rep.OK() {
			failed = append(failed, a.Name)
		}
	}
	if o.file == "" {
		// The shop's web tier answers through both paths: web -> app in
		// plain, app -> db encrypted.
		shopRequest := func(ctx context.Context, w io.Writer) error { return demoShopRequest(ctx, w, c, l) }
		if l.Hosts == lab.HostsVM {
			// The web tasks run inside the VMs: the request enters
			// from the lab's outside client instead (labhosts.go).
			shopRequest = func(ctx context.Context, w io.Writer) error { return demoShopRequestVM(ctx, w, l) }
		}
		if err := shopRequest(ctx, out); err != nil {
			fmt.Fprintf(talk, "the request to the web tier failed: %v\n", err)
			failed = append(failed, "shop (web request)")
		}
		// And from outside Corridor: the shop publishes web on port 80.
		if err := demoIngressRequest(ctx, out, l); err != nil {
			fmt.Fprintf(talk, "the request from the outside client failed: %v\n", err)
			failed = append(failed, "shop (outside request)")
		}
	}
	if err := printDemoState(ctx, out, c, apps); err != nil {
		return err
	}
	printExplore(out, l, o.keep)
	if len(failed) > 0 {
		return &exitError{code: 1, err: fmt.Errorf("verify failed for %s: the paths do not match the policy (see the table above)", strings.Join(failed, ", "))}
	}
	return nil
}

func indentList(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return "\n  " + strings.Join(lines, "\n  ")
}

func printDemoVerify(w io.Writer, rep *verify.Report) {
	// One line per class pair and port, the worst outcome of its checks.
	type key struct{ from, to, port string }
	type agg struct {
		expect, observed string
		n                int
		ok               bool
	}
	rows := map[key]*agg{}
	var keys []key
	for _, c := range rep.Checks {
		from := c.FromClass
		if c.FromApp != c.App {
			from = c.FromApp + "/" + c.FromClass
		}
		k := key{from, c.ToClass, fmt.Sprintf("%s/%d", c.Protocol, c.Port)}
		a := rows[k]
		if a == nil {
			a = &agg{ok: true}
			rows[k] = a
			keys = append(keys, k)
		}
		a.n++
		if !c.OK && a.ok {
			a.ok = false
			a.expect, a.observed = c.Expect, c.Observed
		} else if a.ok {
			a.expect, a.observed = mergeVerdict(a.expect, c.Expect), mergeVerdict(a.observed, c.Observed)
		}
	}
	fmt.Fprintf(w, "\nverify %s: expected against observed, with real traffic\n", rep.App)
	t := NewTable(w)
	t.Header("from class", "to class", "port", "probes", "expected", "observed", "")
	for _, k := range keys {
		a := rows[k]
		mark := "ok"
		if !a.ok {
			mark = "MISMATCH"
		}
		t.Row(k.from, k.to, k.port, fmt.Sprint(a.n), a.expect, a.observed, mark)
	}
	t.Flush()
	fmt.Fprintf(w, "%d of %d checks match the policy\n", rep.Passed, len(rep.Checks))
	fmt.Fprintln(w, rep.Coverage)
}

// mergeVerdict joins the verdicts of several probes of one class pair:
// a pair whose tasks share a host on some probes reads "plain+local".
func mergeVerdict(a, b string) string {
	switch {
	case a == "" || a == b:
		return b
	case strings.Contains(a, b):
		return a
	}
	parts := strings.Split(a+"+"+b, "+")
	sort.Strings(parts)
	return strings.Join(parts, "+")
}

// printDemoState prints where each task runs and the path matrix with the
// live state of the WireGuard peers.
func printDemoState(ctx context.Context, w io.Writer, c *api.Client, apps []spec.App) error {
	tasks, err := c.ListTasks(ctx, api.Filter{})
	if err != nil {
		return explain(err)
	}
	fmt.Fprintln(w, "\nwhere each task runs")
	t := NewTable(w)
	t.Header("task", "server", "address", "state", "why this server")
	for _, ti := range tasks {
		state := "unknown"
		if ti.Status != nil {
			state = ti.Status.State
		}
		t.Row(ti.ID, ti.Server, ti.Address.String(), state, ti.Reason.Chosen)
	}
	t.Flush()

	paths, err := c.ListPaths(ctx, api.Filter{})
	if err != nil {
		return explain(err)
	}
	for _, a := range apps {
		fmt.Fprintf(w, "\npath matrix of %s (row: from class, column: to class)\n", a.Name)
		err := writeClassMatrix(w, a.Classes, func(from, to string) string { return demoCell(a.Name, from, to, paths) })
		if err != nil {
			return err
		}
	}
	return nil
}

// demoCell sums the live state of the paths of one class pair.
func demoCell(app, from, to string, paths []api.PathInfo) string {
	var n, local int
	var encrypt bool
	var ports string
	var rx, tx int64
	newest := -1.0
	for _, p := range paths {
		if p.App != app || p.FromClass != from || p.ToClass != to {
			continue
		}
		n++
		encrypt = p.Path.Encrypt
		ports = fmt.Sprintf("%s/%s", p.Protocol, joinInts(p.Ports))
		if p.Local {
			local++
			continue
		}
		if p.Peer != nil {
			rx += p.Peer.RxBytes
			tx += p.Peer.TxBytes
		}
		if p.HandshakeAge >= 0 && (newest < 0 || p.HandshakeAge < newest) {
			newest = p.HandshakeAge
		}
	}
	if n == 0 {
		return "denied"
	}
	kind := "plain"
	if encrypt {
		kind = "encrypted"
	}
	cell := fmt.Sprintf("%s %s (%d paths", kind, ports, n)
	if local > 0 {
		cell += fmt.Sprintf(", %d within a host", local)
	}
	cell += ")"
	if encrypt && n > local {
		hs := "no handshake"
		if newest >= 0 {
			hs = "handshake " + (time.Duration(newest * float64(time.Second))).Round(time.Second).String() + " ago"
		}
		cell += fmt.Sprintf(" %s, peer rx %s tx %s", hs, humanBytes(rx), humanBytes(tx))
	}
	return cell
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func printExplore(w io.Writer, l *lab.Lab, keep bool) {
	if !keep {
		fmt.Fprintln(w, "\nrun `corridor demo --keep` to leave the lab up and explore it.")
		return
	}
	tok, _ := l.AdminToken()
	fmt.Fprintf(w, `
the lab is up. Explore it:
  export CORRIDOR_SERVER=%s CORRIDOR_TOKEN=%s CORRIDOR_CA=%s
  corridor get paths                      # every path, encrypted or plain, with handshakes and bytes
  corridor describe app shop              # placement reasons, paths, status
  corridor verify shop                    # prove the policy again with real traffic
  ip netns exec cor-shop-web-0 curl -s localhost/api/summary   # the web tier: web -> app -> db
  corridor logs shop/db/0                 # a task's output
  corridor lab down --dir %s     # remove it all
`, l.ServerURL, tok, l.CAFile, l.Dir)
}

func step(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "==> "+format+"\n", args...)
}

// quietLogger logs warnings and errors only: the demo shows its own steps.
func quietLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// demoShopRequest sends one order through the web tier of the shop, from
// inside a web task's own namespace, and shows which tasks served it.
func demoShopRequest(ctx context.Context, w io.Writer, c *api.Client, l *lab.Lab) error {
	tasks, err := c.ListTasks(ctx, api.Filter{App: "shop"})
	if err != nil {
		return err
	}
	var web *api.TaskInfo
	for i := range tasks {
		if tasks[i].Class == "web" {
			web = &tasks[i]
			break
		}
	}
	if web == nil {
		return errors.New("no web task")
	}
	ns := l.GuestNetnsOn(web.Server, web.ID)
	hc := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return probe.DialContext(ctx, ns, network, addr)
		}},
	}
	body := strings.NewReader(`{"item":"demo widget","qty":3}`)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://127.0.0.1:80/api/orders", body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST /api/orders: %s", resp.Status)
	}
	resp, err = hc.Get("http://127.0.0.1:80/api/summary")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var sum struct {
		ServedBy   map[string]string `json:"servedBy"`
		OrderCount int               `json:"orderCount"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&sum); err != nil {
		return fmt.Errorf("GET /api/summary: %w", err)
	}
	fmt.Fprintf(w, "\na request to the web tier (inside %s): %d orders, served by web %s -> app %s (plain) -> db %s (encrypted)\n",
		filepath.Base(ns), sum.OrderCount, sum.ServedBy["web"], sum.ServedBy["app"], sum.ServedBy["db"])
	return nil
}

// prefixValue is a flag holding an IP prefix.
type prefixValue struct{ p *netip.Prefix }

func (v prefixValue) String() string {
	if v.p == nil || !v.p.IsValid() {
		return ""
	}
	return v.p.String()
}

func (v prefixValue) Set(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return err
	}
	*v.p = p
	return nil
}

func (prefixValue) Type() string { return "prefix" }
