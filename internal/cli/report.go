package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/atomicfile"
	"github.com/corridor-dev/corridor/internal/report"
)

func init() { register(newReportCmd) }

func newReportCmd() *cobra.Command {
	var format, out, since string
	cmd := &cobra.Command{
		Use:   "report APP",
		Short: "Write an app's evidence report, signed by the control plane's CA (HTML or JSON)",
		Long: `report asks the control plane for APP's evidence report and writes it to a file:
one self-contained HTML page (inline CSS, no external asset, nothing that runs),
or with -o json its signed JSON. It holds the policy as applied (revision and
spec hash), where each task runs and why, the path matrix and every path with
its handshake age and bytes, the last stored verify run (every check: expected,
observed, what the capture counted, when), the WireGuard keys of the app's
servers (generation, age, rotations of the period), the events of the period
(--since, default the last 7 days) about the app and its servers, and the
versions of the server and the agents.

The control plane signs the report's canonical JSON with its CA's key; the file
carries that signature. ` + "`corridor report verify FILE --ca ca.crt`" + ` checks it later,
offline, with the CA certificate alone: an edit to any byte of the file makes the
check fail.

Run ` + "`corridor verify APP`" + ` first: the report shows the newest stored run.`,
		Example: `  corridor verify shop && corridor report shop            # writes report-shop.html
  corridor report shop -o json --out shop.json --since 720h
  corridor report verify report-shop.html --ca /var/lib/corridor/ca.crt`,
		Args:        cobra.ExactArgs(1),
		Annotations: map[string]string{positionalWithSubcommands: "true"},
	}
	cf := addClientFlags(cmd)
	cmd.Flags().StringVarP(&format, "output", "o", "html", "file format: html or json")
	cmd.Flags().StringVar(&out, "out", "", `file to write (default report-APP.html or report-APP.json; "-": stdout)`)
	cmd.Flags().StringVar(&since, "since", "", "start of the period whose events are listed: an RFC 3339 time or a duration back from now (default 168h)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if format != "html" && format != "json" {
			return fmt.Errorf("unknown output format %q: use html or json", format)
		}
		c, err := cf.client()
		if err != nil {
			return err
		}
		signed, err := c.Report(cmd.Context(), args[0], since)
		if err != nil {
			return explain(err)
		}
		var data []byte
		if format == "json" {
			data, err = report.EncodeJSON(signed)
		} else {
			data, err = report.HTML(signed)
		}
		if err != nil {
			return err
		}
		if out == "" {
			out = "report-" + args[0] + "." + format
		}
		if out == "-" {
			_, err = cmd.OutOrStdout().Write(data)
			return err
		}
		if err := atomicfile.Write(out, data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", out, err)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "report of %s written to %s (signed by the control plane's CA %s; check it with `corridor report verify %s --ca ca.crt`)\n",
			args[0], out, signed.Signature.CA, out)
		return nil
	}
	cmd.AddCommand(newReportVerifyCmd())
	return cmd
}

func newReportVerifyCmd() *cobra.Command {
	var caFile string
	cmd := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check offline that a report file is as the control plane signed it",
		Long: `verify checks a report written by ` + "`corridor report`" + ` (HTML or JSON) against the
control plane's CA certificate (--ca, else $CORRIDOR_CA, else the CA of
` + "`corridor login`" + `): the signature must hold for the embedded report, and the file
must be exactly what that report renders to. It needs no server. Exit 0 when
the file is intact, 1 otherwise.`,
		Example: "  corridor report verify report-shop.html --ca ca.crt",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			caPEM, err := reportCA(caFile)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			r, sig, err := report.VerifyFile(data, caPEM)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			verdict := "no verify run"
			if r.Verify != nil {
				verdict = fmt.Sprintf("verify run %s: %d match, %d mismatch, %d incomplete", r.Verify.ID, r.Verify.Passed, r.Verify.Failed, r.Verify.Incomplete)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: intact: report of app %s (policy revision %d, %s), generated %s by %s, signed by CA %s (%s, digest %s); %s\n",
				args[0], r.App, r.Policy.Revision, r.Policy.Hash, r.GeneratedAt.Format("2006-01-02T15:04:05Z07:00"), r.Control.ID, sig.CA, sig.Alg, sig.Digest, verdict)
			return nil
		},
	}
	cmd.Flags().StringVar(&caFile, "ca", "", "the control plane's CA certificate, DATA_DIR/ca.crt (default: $CORRIDOR_CA, then the login file)")
	return cmd
}

// reportCA is the CA certificate to check reports with: the file given,
// else $CORRIDOR_CA, else the CA the login file holds.
func reportCA(file string) ([]byte, error) {
	if file == "" {
		file = os.Getenv("CORRIDOR_CA")
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		return b, nil
	}
	cfg, path, err := loadClientConfig()
	if err != nil {
		return nil, err
	}
	if cfg.CA == "" {
		return nil, errors.New("no CA certificate: pass --ca DATA_DIR/ca.crt (the control plane's), set CORRIDOR_CA, or log in with --ca (" + path + " holds none)")
	}
	return []byte(cfg.CA), nil
}
