package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/lab"
)

func init() { register(newLabCmd) }

func newLabCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Make, inspect and remove a fleet of servers made of network namespaces on this machine",
		Long: `A lab is a Corridor fleet on one machine: an underlay bridge in its own network
namespace, one namespace per simulated server (s1..sN) plugged into it, a
"corridor server" in the root namespace and one "corridor agent" per server
namespace. Everything the lab makes is recorded in DIR/lab.json, so that
"lab down" removes it even after a crash. Needs root.`,
		Example: `  sudo corridor lab up --servers 3
  sudo corridor lab status
  sudo corridor lab down`,
	}
	cmd.AddCommand(newLabUpCmd(), newLabDownCmd(), newLabStatusCmd())
	return cmd
}

// labLogger writes progress to stderr, as talk.
func labLogger(cmd *cobra.Command) *slog.Logger {
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// interruptible cancels the context on SIGINT or SIGTERM: lab up stops
// waiting and reports what it left (recorded, for lab down); server, agent
// and logs -f stop.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

func newLabUpCmd() *cobra.Command {
	var (
		opts     lab.Options
		underlay string
		output   *string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Make a lab: namespaces, underlay bridge, a server and one agent per simulated server",
		Long: `Make a lab and wait until every agent has joined the server. On success it prints
how to reach the fleet: the server URL, the admin token, the CA, and export lines
for CORRIDOR_SERVER, CORRIDOR_TOKEN and CORRIDOR_CA (on stdout; progress goes to
stderr). If a lab is already up in DIR it says so and fails, unless --force.`,
		Example: `  sudo corridor lab up
  sudo corridor lab up --servers 5 --dir /tmp/lab --underlay 198.18.4.0/24
  eval "$(sudo corridor lab up -o env)"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return errors.New("lab up needs root (it makes network namespaces and links): run it with sudo")
			}
			p, err := netip.ParsePrefix(underlay)
			if err != nil {
				return fmt.Errorf("--underlay: %q is not a subnet such as 198.18.0.0/24: %w", underlay, err)
			}
			opts.Underlay = p
			opts.Logger = labLogger(cmd)
			switch *output {
			case "env", formatTable, formatJSON, formatYAML:
			default:
				return fmt.Errorf("--output: unknown format %q: use table, env, json or yaml", *output)
			}
			ctx, cancel := interruptible(cmd.Context())
			defer cancel()
			l, err := lab.Up(ctx, opts)
			if err != nil {
				if l != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "lab up failed; what it made is recorded in %s/lab.json. Read the logs in %s/logs, then remove it with:\n  corridor lab down --dir %s\n", l.Dir, l.Dir, l.Dir)
				}
				return err
			}
			return printLabAccess(cmd, l, *output)
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.Servers, "servers", lab.DefaultServers, "number of simulated servers (s1..sN)")
	f.StringVar(&opts.Dir, "dir", lab.DefaultDir(), "lab directory: record, server data, agent state, logs ($CORRIDOR_LAB_DIR)")
	f.StringVar(&underlay, "underlay", lab.DefaultUnderlay.String(), "underlay subnet: the root link takes .1, server i takes .10+i")
	f.IntVar(&opts.MTU, "mtu", lab.DefaultMTU, "MTU of the underlay bridge and veths")
	f.StringVar(&opts.Binary, "binary", "", "corridor executable to run for server and agents (default: this executable)")
	f.StringVar(&opts.Prefix, "prefix", lab.DefaultPrefix, "prefix of the lab's namespace names; two labs on one machine need two prefixes")
	f.BoolVar(&opts.Force, "force", false, "remove a lab already up in DIR first")
	f.DurationVar(&opts.JoinTimeout, "join-timeout", 0, "how long to wait for every agent to join (default 90s)")
	output = f.StringP("output", "o", formatTable, "output format: table, env, json or yaml")
	addHostsFlags(cmd, &opts)
	return cmd
}

// labAccess is what `lab up` prints: how to use the fleet.
type labAccess struct {
	Dir       string   `json:"dir"`
	ServerURL string   `json:"serverURL"`
	Console   string   `json:"console"` // the web console: log in with Token
	Token     string   `json:"token"`
	CAFile    string   `json:"caFile"`
	Servers   []string `json:"servers"`
}

func printLabAccess(cmd *cobra.Command, l *lab.Lab, format string) error {
	tok, err := l.AdminToken()
	if err != nil {
		return err
	}
	a := labAccess{Dir: l.Dir, ServerURL: l.ServerURL, Console: l.ServerURL + "/ui/", Token: tok, CAFile: l.CAFile}
	for _, s := range l.Servers {
		a.Servers = append(a.Servers, s.Name)
	}
	out := cmd.OutOrStdout()
	exports := fmt.Sprintf("export CORRIDOR_SERVER=%s CORRIDOR_TOKEN=%s CORRIDOR_CA=%s\n", shellQuote(a.ServerURL), shellQuote(a.Token), shellQuote(a.CAFile))
	if format == "env" {
		_, err := fmt.Fprint(out, exports)
		return err
	}
	if err := printData(out, format, a, func(t *Table) {
		t.Row("server URL:", a.ServerURL)
		t.Row("admin token:", a.Token)
		t.Row("web console:", a.Console+" (log in with the admin token)")
		t.Row("CA:", a.CAFile)
		t.Row("servers:", strings.Join(a.Servers, " "))
		t.Row("lab dir:", a.Dir)
	}); err != nil {
		return err
	}
	if format == formatTable || format == "" {
		fmt.Fprintln(out)
		fmt.Fprint(out, exports)
		fmt.Fprintf(cmd.ErrOrStderr(), "\nPaste the export line into your shell, then try `corridor get servers`. Remove the lab with `sudo corridor lab down --dir %s`.\n", l.Dir)
	}
	return nil
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@%+,", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func newLabDownCmd() *cobra.Command {
	var opts lab.DownOptions
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove a lab: agents' guests and devices, processes, namespaces, links and files",
		Long: `Remove everything a lab made, also after a crash or a half-finished "lab up":
each agent first removes its guests, devices and rules, then every process of
the lab is ended (checked by PID and start time), the namespaces, the root link
and WireGuard sockets are deleted, and the lab directory removed. Running it
twice is harmless. When DIR/lab.json is missing or damaged, it removes only what
is named after --prefix, and only when --prefix is given.`,
		Example: `  sudo corridor lab down
  sudo corridor lab down --dir /tmp/lab --keep-logs
  sudo corridor lab down --prefix corlab-    # lab.json lost: remove by name`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return errors.New("lab down needs root (it deletes network namespaces and links): run it with sudo")
			}
			if !cmd.Flags().Changed("prefix") {
				opts.Prefix = ""
			}
			opts.Logger = labLogger(cmd)
			// This binary runs the agents' cleanup when lab.json names
			// none (a lab recovered by prefix).
			if exe, err := os.Executable(); err == nil {
				opts.Binary = exe
			}
			return lab.Down(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Dir, "dir", lab.DefaultDir(), "lab directory ($CORRIDOR_LAB_DIR)")
	f.StringVar(&opts.Prefix, "prefix", lab.DefaultPrefix, "remove what is named after this prefix; used only when DIR/lab.json is missing or damaged")
	f.BoolVar(&opts.KeepLogs, "keep-logs", false, "keep DIR/logs")
	return cmd
}

func newLabStatusCmd() *cobra.Command {
	var dir string
	var output *string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what of a lab is up: namespaces, processes, server readiness, joined servers",
		Long: `Show what of a lab is up: its namespaces, whether the server and each agent run
(checked by PID and start time), whether the server answers /readyz, and which
servers it lists as joined. Exits 0 when everything is up, 2 when something is
not, 3 when DIR holds no lab.`,
		Example: `  sudo corridor lab status
  sudo corridor lab status --dir /tmp/lab -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Load(dir)
			if err != nil {
				if errors.Is(err, lab.ErrNoLab) {
					return &exitError{code: 3, err: fmt.Errorf("no lab in %s (make one with `corridor lab up --dir %s`)", dir, dir)}
				}
				return err
			}
			st := l.Status(cmd.Context())
			if err := printData(cmd.OutOrStdout(), *output, st, func(t *Table) { labStatusTable(t, st) }); err != nil {
				return err
			}
			if !st.Up() {
				return &exitError{code: 2, err: fmt.Errorf("the lab in %s is not fully up", l.Dir)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", lab.DefaultDir(), "lab directory ($CORRIDOR_LAB_DIR)")
	output = addOutputFlag(cmd)
	return cmd
}

func labStatusTable(t *Table, st lab.Status) {
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	ready := yes(st.ControlReady)
	if st.ControlError != "" {
		ready += " (" + st.ControlError + ")"
	}
	t.Header("component", "name", "present", "running", "ready/joined", "detail")
	t.Row("server", st.ServerURL, "-", yes(st.ControlAlive), ready, st.Phase)
	t.Row("underlay", st.Underlay.Name, yes(st.Underlay.Present), "-", "-", "root link "+yes(st.RootLink))
	gw := fmt.Sprintf("dropped %d packets (%d bytes) for outside addresses", st.Gateway.Packets, st.Gateway.Bytes)
	if st.Gateway.Error != "" {
		gw = st.Gateway.Error
	}
	t.Row("gateway", st.Gateway.Address, yes(st.Gateway.Error == ""), "-", "-", gw)
	for _, s := range st.Servers {
		pid := "-"
		if s.AgentPID != 0 {
			pid = "pid " + strconv.Itoa(s.AgentPID)
		}
		detail := s.Address
		if s.State != "" {
			detail += " " + s.State
		}
		if s.WireGuard != "" {
			detail += " wireguard " + s.WireGuard
		}
		if s.VM != nil {
			// A VM host: its QEMU, and the agent inside it (heard from by
			// the control plane).
			if s.VM.QEMUPID != 0 {
				pid = "qemu pid " + strconv.Itoa(s.VM.QEMUPID)
			}
			detail += fmt.Sprintf(" vm %s, %d boots, wireguard module %s, tap %s", s.VM.Accel, s.VM.Boots, s.VM.Module, s.VM.Tap)
		}
		t.Row(s.Name, s.Namespace, yes(s.Present), yes(s.AgentAlive)+" "+pid, yes(s.Joined), detail)
	}
	for _, g := range st.Guests {
		t.Row("guest", g.Name, yes(g.Present), "-", "-", "")
	}
}
