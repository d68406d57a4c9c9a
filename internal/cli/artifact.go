package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/spf13/cobra"
)

func init() { register(newArtifactCmd) }

// newArtifactCmd is `corridor artifact push|ls`: the control plane's store
// of task programs (docs/operations.md, "Delivering task programs").
func newArtifactCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "artifact",
		Short: "Upload task programs to the control plane and list them",
		Long: `The control plane keeps task programs by their SHA-256. A class runs one by
naming it instead of a command:

  guest:
    runtime: netns
    artifact:
      url: corridor://SHA256
      sha256: SHA256
      args: [serve]

Each agent fetches it with its own certificate, checks the hash, and runs it.`,
	}
	cmd.AddCommand(newArtifactPushCmd(), newArtifactLsCmd())
	return cmd
}

func newArtifactPushCmd() *cobra.Command {
	var cf *clientFlags
	var out *string
	var run string
	var vmImage bool
	cmd := &cobra.Command{
		Use:   "push FILE",
		Short: "Upload a program (or a .tar.gz of one) and print its sha256 and the spec lines that run it",
		Example: `  corridor artifact push ./web
  corridor artifact push ./web.tar.gz --run bin/web
  corridor artifact push ./guest.tgz --vm   # tar -C DIR -czf guest.tgz . of a corridor image build --out DIR`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			file := args[0]
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			if !st.Mode().IsRegular() {
				return fmt.Errorf("%s is not a regular file", file)
			}
			h := sha256.New()
			if _, err := io.Copy(h, f); err != nil {
				return fmt.Errorf("read %s: %w", file, err)
			}
			sum := hex.EncodeToString(h.Sum(nil))
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			start := time.Now()
			info, err := c.PushArtifact(cmd.Context(), sum, f, st.Size())
			if err != nil {
				return explain(err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "pushed %s (%d bytes) in %s\n", file, info.Size, time.Since(start).Round(time.Millisecond))
			if *out != formatTable {
				return printData(cmd.OutOrStdout(), *out, info, nil)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintln(w, info.SHA256)
			archive := strings.HasSuffix(file, ".tar.gz") || strings.HasSuffix(file, ".tgz")
			if vmImage {
				what := "disk image"
				if archive {
					what = "guest image"
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "\nIn a class of your app (runtime vm), instead of kernel, initrd and image (the %s the VM boots):\n", what)
				fmt.Fprintf(w, "    artifact:\n      url: %s\n      sha256: %s\n", info.URL, info.SHA256)
				if archive {
					fmt.Fprintf(w, "      archive: true\n")
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "(with command: [...], the program the image's init runs)\n")
				return nil
			}
			if run == "" && archive {
				run = "PROGRAM-IN-THE-ARCHIVE"
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "\nIn a class of your app (runtime netns), instead of command:\n")
			fmt.Fprintf(w, "    artifact:\n      url: %s\n      sha256: %s\n", info.URL, info.SHA256)
			if archive {
				fmt.Fprintf(w, "      archive: true\n      run: %s\n", run)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "(add args: [...] for the arguments of %s)\n", filepath.Base(file))
			return nil
		},
	}
	cf = addClientFlags(cmd)
	out = addOutputFlag(cmd)
	cmd.Flags().StringVar(&run, "run", "", "for a .tar.gz: the program inside it, for the printed spec lines")
	cmd.Flags().BoolVar(&vmImage, "vm", false, "FILE is a VM's boot image (a .tar.gz of an image directory, or a disk image): print the spec lines for a runtime vm class")
	return cmd
}

func newArtifactLsCmd() *cobra.Command {
	var cf *clientFlags
	var out *string
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the artifacts in the control plane's store",
		Example: "  corridor artifact ls",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			list, err := c.ListArtifacts(cmd.Context())
			if err != nil {
				return explain(err)
			}
			return printData(cmd.OutOrStdout(), *out, list, func(t *Table) {
				t.Header("sha256", "size", "stored")
				for _, a := range list {
					t.Row(a.SHA256, strconv.FormatInt(a.Size, 10), a.Stored.Format(time.RFC3339))
				}
			})
		},
	}
	cf = addClientFlags(cmd)
	out = addOutputFlag(cmd)
	return cmd
}

// taskReason is the reason column of `get tasks`: why a failed task
// failed (a program that cannot be had, say: its artifact's hash did not
// match), else why it was placed where it is.
func taskReason(x api.TaskInfo) string {
	if x.Status != nil && x.Status.State == api.TaskFailed && x.Status.Message != "" {
		return x.Status.Message
	}
	return x.Reason.Chosen
}
