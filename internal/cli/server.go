package cli

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/server"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
)

func init() { register(newServerCmd) }

func newServerCmd() *cobra.Command {
	var (
		cfg                               server.Config
		endpoints, advertise              string
		etcdCA, etcdCert, etcdKey, prefix string
		logLevel                          string
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: API, CA, controller (or manage servers: remove, backup)",
		Long: `server runs Corridor's control plane until SIGINT or SIGTERM: the HTTPS API,
the CA that signs agents' certificates, and the controller that places tasks
and writes each host's desired state. State lives in an embedded etcd in the
data directory, or in an external etcd cluster (--etcd-endpoints); several
servers may share one etcd: all serve the API, one runs the controller.

On first start it makes the CA (DATA_DIR/ca.crt), the admin token
(DATA_DIR/admin.token) and the join token (DATA_DIR/join.token), both mode 0600.`,
		Example: `  corridor server --data-dir /var/lib/corridor
  corridor server --data-dir /var/lib/corridor --listen 0.0.0.0:7443 --advertise cp1.example.net
  corridor server --data-dir /var/lib/corridor --etcd-endpoints https://e1:2379,https://e2:2379 \
    --etcd-ca ca.pem --etcd-cert client.pem --etcd-key client-key.pem
  # flags from a file (keys are the flag names; the command line wins), as
  # the package's corridor-server.service does
  corridor server --config /etc/corridor/server.yaml`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return configFile(cmd)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := levelLogger(cmd, logLevel)
			if err != nil {
				return err
			}
			cfg.Logger = log
			cfg.Advertise = splitList(advertise)
			cfg.Etcd = store.Config{Endpoints: splitList(endpoints), CAFile: etcdCA, CertFile: etcdCert, KeyFile: etcdKey, Prefix: prefix}
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			s, err := server.New(cfg)
			if err != nil {
				return err
			}
			w := cmd.ErrOrStderr()
			fmt.Fprintf(w, "corridor server at %s (listening on %s)\n", s.PublicURL(), s.Addr())
			if len(cfg.Advertise) == 0 && s.PublicURL() != s.URL() {
				fmt.Fprintf(w, "  agents on other hosts need a name this server's certificate holds: restart with --advertise HOST\n")
			}
			fmt.Fprintf(w, "  admin token: %s\n", filepath.Join(cfg.DataDir, server.AdminTokenFile))
			fmt.Fprintf(w, "  join token:  %s\n", filepath.Join(cfg.DataDir, server.JoinTokenFile))
			fmt.Fprintf(w, "  CA:          %s\n", filepath.Join(cfg.DataDir, server.CACertFile))
			fmt.Fprintf(w, "  console:     %s/ui/ (log in with the admin token)\n", s.PublicURL())
			fmt.Fprintf(w, "log in with: corridor login --server %s --token \"$(cat %s)\" --ca %s\n",
				s.PublicURL(), filepath.Join(cfg.DataDir, server.AdminTokenFile), filepath.Join(cfg.DataDir, server.CACertFile))
			return s.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "", "data directory: embedded etcd, tokens, CA (required)")
	f.StringVar(&cfg.Listen, "listen", server.DefaultListen, "HTTPS listen address")
	f.StringVar(&advertise, "advertise", "", "comma-separated host names or IPs to put in the server certificate")
	f.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated external etcd endpoints (default: embedded etcd)")
	f.StringVar(&etcdCA, "etcd-ca", "", "CA file of the external etcd")
	f.StringVar(&etcdCert, "etcd-cert", "", "client certificate file for the external etcd")
	f.StringVar(&etcdKey, "etcd-key", "", "client key file for the external etcd")
	f.StringVar(&prefix, "etcd-prefix", store.DefaultPrefix, "key prefix in etcd")
	f.DurationVar(&cfg.HeartbeatTimeout, "heartbeat-timeout", server.DefaultHeartbeatTimeout, "a server silent for longer is down and its tasks move")
	f.DurationVar(&cfg.MoveTimeout, "move-timeout", server.DefaultMoveTimeout, "tasks leave a draining server make-before-break (a copy starts on the new server, connections are held and drained, then every host switches to it); each step not done within this moves them in one step instead; 0 always moves them in one step")
	f.DurationVar(&cfg.RotationDrain, "rotation-drain", server.DefaultRotationDrain, "during a hitless key rotation, how long every side must route by its new device before the old one's sessions go (covers packets a loaded user-space WireGuard still holds)")
	f.DurationVar(&cfg.KeyRotation, "key-rotation", 0, "rotate each server's WireGuard key once it is older than this, one server at a time (e.g. 720h; 0: only on request, with \"corridor server rotate-key\")")
	f.DurationVar(&cfg.ClientCertLifetime, "agent-cert-lifetime", server.DefaultClientCertLifetime, "lifetime of the agents' client certificates; agents renew theirs over mTLS at two thirds of it, without the join token")
	f.Int64Var(&cfg.ArtifactMaxSize, "artifact-max-size", server.DefaultArtifactMaxSize, "largest artifact \"corridor artifact push\" may store, in bytes")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	addConfigFlag(cmd, "/etc/corridor/server.yaml")
	_ = cmd.MarkFlagRequired("data-dir")
	cmd.AddCommand(newServerRemoveCmd(), newServerRotateKeyCmd(), newServerBackupCmd(), newServerDrainCmd(true), newServerDrainCmd(false))
	return cmd
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func newServerRemoveCmd() *cobra.Command {
	var cf *clientFlags
	cmd := &cobra.Command{
		Use:     "remove NAME",
		Short:   "Remove a server: refuse its certificate from now on and place its tasks elsewhere",
		Example: `  corridor server remove s3`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			if err := c.RemoveServer(cmd.Context(), args[0]); err != nil {
				return explain(err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "server %s removed; its tasks are being placed elsewhere\n", args[0])
			return nil
		},
	}
	cf = addClientFlags(cmd)
	return cmd
}

func newServerRotateKeyCmd() *cobra.Command {
	var cf *clientFlags
	var all, wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "rotate-key NAME... | --all",
		Short: "Give servers new WireGuard key pairs, made on each host (the private key never leaves it)",
		Long: `rotate-key asks the agent of each named server for a new WireGuard key pair.
The rotation is hitless: the agent makes the next key on its host (the private
key never leaves it) and reports the public key; the server announces it to
every host that shares an encrypted path with it, which holds it beside the
current one on a second WireGuard device (corw0+, port+1); once every side
routes by that device the new key is committed, every side moves back to
corw0, and the second devices go. No packet is lost and none leaves in plain.
The server runs one rotation at a time in the fleet (the others wait their
turn); a control plane that stops in the middle resumes it when it is back.

--wait follows each rotation phase by phase (prepare, announce, commit, clear)
until it is done. "corridor describe server NAME" shows the key, its
generation and the rotation under way; events record each phase.`,
		Example: "  corridor server rotate-key s3 --wait\n  corridor server rotate-key --all",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return fmt.Errorf("name the servers to rotate, or give --all (not both)")
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			if all {
				servers, err := c.ListServers(cmd.Context())
				if err != nil {
					return explain(err)
				}
				for _, s := range servers {
					if s.State != api.ServerRevoked {
						args = append(args, s.Spec.Name)
					}
				}
			}
			asked := map[string]int64{}
			start := time.Now()
			for _, name := range args {
				s, err := c.RotateKey(cmd.Context(), name)
				if err != nil {
					return explain(err)
				}
				asked[name] = s.Spec.KeyGeneration
				fmt.Fprintf(cmd.ErrOrStderr(), "server %s: key rotation to generation %d asked; its agent makes the next key\n", name, s.Spec.KeyGeneration)
			}
			if !wait {
				return nil
			}
			return waitKeys(cmd, c, args, asked, start, timeout)
		},
	}
	cf = addClientFlags(cmd)
	cmd.Flags().BoolVar(&all, "all", false, "rotate the keys of every server that is not removed")
	cmd.Flags().BoolVar(&wait, "wait", false, "follow each rotation, phase by phase, until it is done")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long --wait waits")
	return cmd
}

// waitKeys polls the servers until each has a key of the generation asked
// of it in use and no rotation to it under way, saying when each phase of
// each rotation began. One list per round, whatever the number of servers.
func waitKeys(cmd *cobra.Command, c *api.Client, names []string, asked map[string]int64, start time.Time, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	pending := slices.Clone(names)
	phase := map[string]string{}
	for len(pending) > 0 {
		servers, err := c.ListServers(ctx)
		if err != nil && ctx.Err() == nil {
			return explain(err)
		}
		for _, s := range servers {
			name := s.Spec.Name
			i := slices.Index(pending, name)
			if i < 0 {
				continue
			}
			if r := s.Spec.Rotation; r != nil && r.Generation <= asked[name] && phase[name] != r.Phase {
				phase[name] = r.Phase
				detail := ""
				if r.Phase == spec.RotationAnnounce {
					detail = ", next key " + r.NextPublicKey
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "server %s: generation %d: %s%s (%s after the request)\n",
					name, r.Generation, r.Phase, detail, time.Since(start).Round(time.Millisecond))
			}
			if s.KeyGeneration >= asked[name] && (s.Spec.Rotation == nil || s.Spec.Rotation.Generation > asked[name]) {
				fmt.Fprintf(cmd.ErrOrStderr(), "server %s: new key in use (generation %d, %s), rotation done %s after the request\n",
					name, s.KeyGeneration, s.Spec.PublicKey, time.Since(start).Round(time.Millisecond))
				pending = slices.Delete(pending, i, i+1)
			}
		}
		if len(pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			var where []string
			for _, n := range pending {
				where = append(where, n+" ("+cmp.Or(phase[n], "not started: waiting for its turn or its agent")+")")
			}
			return fmt.Errorf("key rotation not done after %s for %s: is the agent running? (corridor get servers, corridor get events; the rotation still stands and goes on when its hosts are back)",
				timeout, strings.Join(where, ", "))
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func newServerBackupCmd() *cobra.Command {
	var cf *clientFlags
	var out string
	cmd := &cobra.Command{
		Use:     "backup --out FILE",
		Short:   "Save an etcd snapshot of all of Corridor's state (keep it secret: it holds the CA key and tokens)",
		Example: `  corridor server backup --out corridor-$(date +%F).snapshot`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out FILE is required")
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			f, err := os.OpenFile(out+".part", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Minute)
			defer cancel()
			n, err := c.Backup(ctx, f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(out + ".part")
				return explain(err)
			}
			if err := os.Rename(out+".part", out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %d bytes to %s\n", n, out)
			return nil
		},
	}
	cf = addClientFlags(cmd)
	cmd.Flags().StringVar(&out, "out", "", "file to write the snapshot to")
	return cmd
}
