// Package cli is Corridor's command line as a library: every command of the
// corridor binary (server, agent, lab, demo and the user commands) is built
// here; cmd/corridor only calls Main.
package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
)

// commands are the constructors of the top-level commands. Each command's
// file registers itself in an init function so that files stay independent.
var commands []func() *cobra.Command

func register(f func() *cobra.Command) { commands = append(commands, f) }

// levelLogger is the logger of a long-running command (server, agent):
// text on its stderr at the level of its --log-level flag, level.
func levelLogger(cmd *cobra.Command, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl})), nil
}

// exitError carries a specific exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// NewRoot builds the corridor command tree.
func NewRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "corridor",
		Short: "Corridor places tasks and sets per-pair encrypted or plain paths between their guests",
		Long: `Corridor places the tasks of your apps on servers, starts their guests, and sets
on both hosts of every needed pair of tasks exactly the path the policy allows:
encrypted (WireGuard, on the hosts) or plain (VXLAN), and nothing else.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmds := make([]*cobra.Command, 0, len(commands))
	for _, f := range commands {
		cmds = append(cmds, f())
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name() < cmds[j].Name() })
	root.AddCommand(cmds...)
	strictArgs(root)
	root.SetFlagErrorFunc(flagError)
	return root
}

// positionalWithSubcommands annotates a command that takes positional
// arguments of its own beside its subcommands (strictArgs leaves it be).
const positionalWithSubcommands = "corridor/positional"

// strictArgs makes every command that only groups others (get, delete,
// server, lab...) fail on an unknown subcommand, with a suggestion, instead
// of printing its help and exiting 0: a script's typo must not count as
// success. A group called alone still prints its help, and exits 0.
func strictArgs(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		strictArgs(c)
	}
	if !cmd.HasSubCommands() {
		return
	}
	if cmd.Annotations[positionalWithSubcommands] != "" {
		return // `corridor report APP` and `corridor report verify FILE`
	}
	if cmd.Runnable() { // `corridor server` runs, and has subcommands
		args := cmd.Args
		cmd.Args = func(c *cobra.Command, a []string) error {
			if len(a) > 0 {
				return unknownCommand(c, a[0])
			}
			if args != nil {
				return args(c, a)
			}
			return nil
		}
		return
	}
	cmd.Args = func(c *cobra.Command, args []string) error { return nil }
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return c.Help()
		}
		return unknownCommand(c, args[0])
	}
}

func unknownCommand(c *cobra.Command, arg string) error {
	msg := fmt.Sprintf("unknown command %q for %q", arg, c.CommandPath())
	c.SuggestionsMinimumDistance = 2
	if sugg := c.SuggestionsFor(arg); len(sugg) > 0 {
		msg += "; did you mean " + strings.Join(sugg, " or ") + "?"
	}
	var names []string
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() {
			names = append(names, sub.Name())
		}
	}
	return fmt.Errorf("%s\n%s takes one of: %s (see `%s --help`)", msg, c.CommandPath(), strings.Join(names, ", "), c.CommandPath())
}

// flagError explains the flag errors users meet most: a negative number
// read as a flag (`scale shop web -1`), and an unknown flag.
func flagError(c *cobra.Command, err error) error {
	msg := err.Error()
	if i := strings.Index(msg, "unknown shorthand flag: '"); i >= 0 {
		if f := strings.TrimPrefix(msg[i:], "unknown shorthand flag: '"); len(f) > 0 && f[0] >= '0' && f[0] <= '9' {
			return fmt.Errorf("%s: a negative number is not a valid argument here (%w)", c.CommandPath(), err)
		}
	}
	return fmt.Errorf("%w\nsee `%s --help`", err, c.CommandPath())
}

// Main runs the command line and returns the process exit code.
func Main(args []string) int {
	root := NewRoot(os.Stdout, os.Stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	if !errors.Is(err, errSilent) { // a status only: the output said why
		fmt.Fprintln(os.Stderr, "error:", err)
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}
