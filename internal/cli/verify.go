package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/verify"
)

func init() { register(newVerifyCmd) }

func newVerifyCmd() *cobra.Command {
	var opt verify.Options
	cmd := &cobra.Command{
		Use:   "verify APP",
		Short: "Prove an app's policy with real traffic: allowed pairs connect, others do not, encrypted pairs show no plaintext",
		Long: `verify connects, from inside the guest of every task of APP, to every other
task on every port a rule names and one it does not, and sends a random marker.
What a check proves depends on the class pair, the port and the two hosts, so
verify covers every (source class, destination class, port, source host,
destination host) combination with a sample of its task pairs (--sample, drawn
with --seed, printed), or every pair with --exhaustive; the summary says what
was covered. The agent of the source host captures its underlay interface
meanwhile:

  - allowed pairs must connect; every other pair and port must not;
  - an encrypted pair must never show the marker on the underlay, and must
    show WireGuard frames between the two hosts during the probe;
  - a plain pair must show it (the control that proves the capture works);
  - tasks of every other app must not reach APP's tasks, nor be reached.

A check that fell short of the policy (an allowed pair that timed out, or whose
port is not open yet) is run again, at once and then for --retry-for (10 s)
after growing pauses, before it counts; a leak (a denied pair that connected, plaintext of
an encrypted pair) is never retried. --no-retry reports first probes as they
are. A probe that could not run (an agent not answering, a VM without a probe
responder or whose probe port did not answer in time) or whose capture cannot
vouch for what it did not see is "incomplete": never counted as a pass. The
probes run through the agents, so verify needs only the admin token.
It exits 1 on any mismatch, and on any incomplete check unless
--allow-incomplete is given. The result is stored on the server (the newest 20
runs per app; --no-record does not), where ` + "`corridor report APP`" + ` finds it.`,
		Example: "  corridor verify shop\n  corridor verify shop -o json\n  corridor verify shop --seed 1234 --sample 5\n  corridor verify shop --exhaustive --max-checks 20000",
		Args:    cobra.ExactArgs(1),
	}
	cf := addClientFlags(cmd)
	out := addOutputFlag(cmd)
	cmd.Flags().DurationVar(&opt.Timeout, "timeout", 2*time.Second, "how long one connection attempt may take (a dropped packet shows as a timeout)")
	cmd.Flags().IntVar(&opt.Parallel, "parallel", 8, "probes at once of checks expected to connect")
	cmd.Flags().IntVar(&opt.DeniedParallel, "parallel-denied", 0, "probes at once of checks expected to be denied, beside the others: each mostly waits out --timeout (0: 4 times --parallel)")
	cmd.Flags().IntVar(&opt.MaxChecks, "max-checks", 5000, "refuse to run more checks than this")
	cmd.Flags().IntVar(&opt.Sample, "sample", verify.DefaultSample, "task pairs probed per (class pair, port, host pair) combination")
	cmd.Flags().BoolVar(&opt.Exhaustive, "exhaustive", false, "probe every task pair, not a sample of each combination (grows with the square of the tasks)")
	cmd.Flags().Int64Var(&opt.Seed, "seed", 0, "seed of the sample, to repeat a run (0: draw one; the report prints it)")
	var allowIncomplete bool
	cmd.Flags().BoolVar(&allowIncomplete, "allow-incomplete", false, "exit 0 when no check contradicts the policy even if some could not be run (they are still reported incomplete)")
	cmd.Flags().BoolVar(&opt.NoRetry, "no-retry", false, "report each check's first probe, without running a shortfall (an allowed pair that timed out) again")
	cmd.Flags().DurationVar(&opt.RetryFor, "retry-for", verify.DefaultRetryFor, "how long shortfalls (an allowed pair that timed out or found nothing listening yet) are run again after the first pass; the first retry is at once")
	var labDir string
	cmd.Flags().StringVar(&labDir, "lab", "", "lab directory whose outside client probes the app's published ports (ingress): allowed clients reach every task, others do not")
	var noRecord bool
	cmd.Flags().BoolVar(&noRecord, "no-record", false, "do not store the result on the server (by default the server keeps the newest 20 runs per app, for `corridor report`)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := cf.client()
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		rep, err := verify.RunFleet(ctx, c, args[0], opt)
		if err != nil {
			return explain(err)
		}
		if labDir != "" {
			l, err := lab.Load(labDir)
			if err != nil {
				return err
			}
			if err := ingressChecks(ctx, c, l, rep, opt); err != nil {
				return explain(err)
			}
		}
		if err := printVerify(cmd.OutOrStdout(), *out, rep); err != nil {
			return err
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "verify %s: %s\n", rep.App, rep.Coverage)
		if !noRecord {
			recordVerifyRun(ctx, cmd.ErrOrStderr(), c, rep)
		}
		return verdict(cmd.ErrOrStderr(), rep, allowIncomplete)
	}
	return cmd
}

// recordVerifyRun stores the run on the server, for reports and the
// console; a failure to store is said on stderr and does not change the
// verdict (the run itself is printed).
func recordVerifyRun(ctx context.Context, w io.Writer, c *api.Client, rep *verify.Report) {
	if ctx.Err() != nil {
		return
	}
	b, err := json.Marshal(rep)
	if err == nil {
		var run api.VerifyRun
		if run, err = c.PostVerifyRun(ctx, rep.App, b); err == nil {
			fmt.Fprintf(w, "verify %s: run %s stored on the server (corridor report %s shows it)\n", rep.App, run.ID, rep.App)
			return
		}
	}
	fmt.Fprintf(w, "warning: verify %s: the run was not stored on the server: %v\n", rep.App, err)
}

func printVerify(w io.Writer, format string, rep *verify.Report) error {
	return printData(w, format, rep, func(t *Table) {
		t.Header("from", "to", "port", "expect", "observed", "", "detail")
		for _, c := range rep.Checks {
			mark := "ok"
			switch {
			case c.Observed == verify.Incomplete:
				mark = "INCOMPLETE"
			case !c.OK:
				mark = "MISMATCH"
			}
			to := c.ToTask + "@" + c.ToServer
			switch {
			case c.ToClass == verify.OutsideClass:
				to = "outside " + c.ToAddr
			case c.FromClass == verify.ClientClass && c.ToTask == "":
				to = c.ToAddr
			case c.FromClass == verify.ClientClass:
				to = c.ToAddr + " -> " + to
			}
			t.Row(c.FromTask+"@"+c.FromServer, to, fmt.Sprintf("%s/%d", c.Protocol, c.Port), c.Expect, c.Observed, mark, c.Detail)
		}
	})
}

// verdict prints the summary on stderr and turns a failed run into exit 1:
// any mismatch, and any incomplete check unless allowIncomplete.
func verdict(w io.Writer, rep *verify.Report, allowIncomplete bool) error {
	switch {
	case rep.OK():
		fmt.Fprintf(w, "verify %s: all %d checks match the policy\n", rep.App, rep.Passed)
		return nil
	case rep.NoMismatch() && allowIncomplete:
		fmt.Fprintf(w, "verify %s: %d checks match the policy, %d incomplete (not proven either way; allowed by --allow-incomplete)\n", rep.App, rep.Passed, rep.Incomplete)
		return nil
	case rep.Failed == 0 && rep.Incomplete > 0:
		return &exitError{code: 1, err: fmt.Errorf("verify %s: %d checks match the policy, %d incomplete (could not be run or proven: see their detail; --allow-incomplete accepts them)", rep.App, rep.Passed, rep.Incomplete)}
	}
	return &exitError{code: 1, err: fmt.Errorf("verify %s: %d of %d checks do not match the policy (%d match, %d incomplete)", rep.App, rep.Failed, len(rep.Checks), rep.Passed, rep.Incomplete)}
}
