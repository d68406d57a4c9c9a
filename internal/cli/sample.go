package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/sample"
	"github.com/corridor-dev/corridor/internal/spec"
)

func init() { register(newSampleCmd) }

func newSampleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sample",
		Short: "Run a tier of the sample three-tier app (web, app, db or postgres)",
		Long: `The sample app is a small shop used by the lab, the demo and verify: web calls
app, app stores orders in db, and every reply names the task of each tier that
served it. Each tier finds the next one from the environment the Corridor agent
gives it (CORRIDOR_PEERS_APP, CORRIDOR_PEERS_DB) and names itself from
CORRIDOR_TASK and CORRIDOR_ADDR. Each runs until SIGTERM or SIGINT.

The db tier is either the built-in key-value service (db) or a real PostgreSQL
(postgres); app uses the one its --db-kind names.`,
		Example: `  corridor sample db --listen :5432 --data /var/lib/shop
  corridor sample app --listen :8080 --db 127.0.0.1:5432
  corridor sample web --listen :8000 --app http://127.0.0.1:8080`,
	}
	cmd.AddCommand(newSampleDBCmd(), newSamplePostgresCmd(), newSampleAppCmd(), newSampleWebCmd(), newSampleHostileCmd())
	return cmd
}

// sampleRun gives a tier its logger, its listener and a context cancelled
// by SIGTERM or SIGINT.
func sampleRun(cmd *cobra.Command, tier, listen string, debug bool, run func(ctx context.Context, ln net.Listener, id sample.Identity, log *slog.Logger) error) error {
	lvl := slog.LevelInfo
	if debug {
		lvl = slog.LevelDebug
	}
	id := sample.IdentityFromEnv(tier)
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl})).
		With("tier", tier, "task", id.Task)
	ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	return run(ctx, ln, id, log)
}

// sampleDataDir is --data, else the task's private directory under
// Corridor; what says what the directory holds, for the error.
func sampleDataDir(flag, what string) (string, error) {
	if flag == "" {
		flag = os.Getenv(spec.EnvDataDir)
	}
	if flag == "" {
		return "", fmt.Errorf("--data: required outside Corridor (the directory that holds %s); under Corridor it defaults to $%s", what, spec.EnvDataDir)
	}
	return flag, nil
}

func newSampleDBCmd() *cobra.Command {
	var listen, data string
	var debug bool
	cmd := &cobra.Command{
		Use:   "db",
		Short: "Run the db tier: a durable key-value service over a TCP line protocol",
		Long: `The db tier keeps a key-value map in an append-only log in --data (one fsync
per write, replayed at start; a torn last record is dropped). Protocol, one
command per line: PING, SET key value, GET key, LIST [prefix]; replies OK,
VALUE v, NOTFOUND, ENTRY k v ... END n, or ERR reason.`,
		Example: `  corridor sample db --listen :5432 --data /var/lib/shop
  printf 'SET greeting hello\nGET greeting\n' | nc -q1 127.0.0.1 5432`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := sampleDataDir(data, "the db log")
			if err != nil {
				return err
			}
			return sampleRun(cmd, "db", listen, debug, func(ctx context.Context, ln net.Listener, id sample.Identity, log *slog.Logger) error {
				defer ln.Close()
				store, err := sample.OpenStore(data, log)
				if err != nil {
					return fmt.Errorf("--data: %w", err)
				}
				defer store.Close()
				srv := &sample.DBServer{Store: store, ID: id, Log: log}
				return srv.Serve(ctx, ln)
			})
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":5432", "TCP address to listen on")
	cmd.Flags().StringVar(&data, "data", "", "directory for the db log (default $"+spec.EnvDataDir+", the task's private directory under Corridor)")
	cmd.Flags().BoolVar(&debug, "debug", false, "log every command")
	return cmd
}

func newSamplePostgresCmd() *cobra.Command {
	var listen, data, bin, runAs string
	cmd := &cobra.Command{
		Use:   "postgres",
		Short: "Run the db tier as a real PostgreSQL server",
		Long: `Runs the PostgreSQL installed on the host (postgres and initdb from --bin, $PATH
or the newest /usr/lib/postgresql/*/bin) with its cluster in --data/pgdata. The
first start makes the cluster: role "corridor", with the password in
$PGPASSWORD (scram-sha-256) or, without one, trust; pg_hba.conf lets that role
in from any address, because in a Corridor guest the firewall decides who
reaches the port. cluster_name is the task (CORRIDOR_TASK), which the app
reports as the db that served a request. Started as root, PostgreSQL runs as
--user, with the data directory bind-mounted for it alone in a private mount
namespace. SIGTERM or SIGINT makes a fast shutdown. Use it with
"corridor sample app --db-kind postgres".`,
		Example: `  corridor sample postgres --listen :5432 --data /var/lib/shop
  PGPASSWORD=s3cret corridor sample postgres --listen 127.0.0.1:5433 --data /tmp/pg`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := sampleDataDir(data, "the cluster")
			if err != nil {
				return err
			}
			host, portStr, err := net.SplitHostPort(listen)
			port, perr := strconv.Atoi(portStr)
			if err != nil || perr != nil || port < 1 || port > 65535 {
				return fmt.Errorf("--listen %q: want [address]:port", listen)
			}
			if host == "" {
				host = "*"
			}
			id := sample.IdentityFromEnv("db")
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)).With("tier", "db", "task", id.Task)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return sample.RunPostgres(ctx, sample.PGOptions{
				Data: data, ListenAddr: host, Port: port, Task: id.Task,
				Password: os.Getenv("PGPASSWORD"), Bin: bin, User: runAs,
				Log: log, Output: cmd.ErrOrStderr(),
			})
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":5432", "address and port to listen on (no address: all of the guest's)")
	cmd.Flags().StringVar(&data, "data", "", "directory for the cluster (default $"+spec.EnvDataDir+", the task's private directory under Corridor)")
	cmd.Flags().StringVar(&bin, "bin", "", "directory of postgres and initdb (default: $PATH, then the newest /usr/lib/postgresql/*/bin)")
	cmd.Flags().StringVar(&runAs, "user", "postgres", "user to run PostgreSQL as when started as root")
	return cmd
}

func newSampleAppCmd() *cobra.Command {
	var listen, db, kind string
	var debug bool
	cmd := &cobra.Command{
		Use:   "app",
		Short: "Run the app tier: an HTTP/JSON order API backed by db",
		Long: `The app tier serves POST /orders {"item": "...", "qty": n}, GET /orders and
GET /healthz (?deep=1 also pings db). It uses the first reachable db of
CORRIDOR_PEERS_DB (comma-separated addr:port), or of --db when given: the
sample key-value db (--db-kind kv, the default) or PostgreSQL (--db-kind
postgres, role "corridor", password from $PGPASSWORD if set).`,
		Example: `  corridor sample app --listen :8080 --db 127.0.0.1:5432
  curl -s -XPOST localhost:8080/orders -d '{"item":"tea","qty":2}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			peers, err := sample.DBPeers(db)
			if err != nil {
				return err
			}
			if kind != "kv" && kind != "postgres" {
				return fmt.Errorf("--db-kind %q: want kv or postgres", kind)
			}
			return sampleRun(cmd, "app", listen, debug, func(ctx context.Context, ln net.Listener, id sample.Identity, log *slog.Logger) error {
				var client sample.Backend
				var err error
				if kind == "postgres" {
					client, err = sample.NewPGClient(peers, log)
				} else {
					client, err = sample.NewDBClient(peers, log)
				}
				if err != nil {
					return err
				}
				defer client.Close()
				log.Info("app using db peers", "peers", peers, "kind", kind)
				app := &sample.App{DB: client, ID: id, Log: log}
				return sample.ServeHTTP(ctx, ln, app.Handler(), log)
			})
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":8080", "TCP address to listen on")
	cmd.Flags().StringVar(&db, "db", "", "db peers, comma-separated addr:port (default: $CORRIDOR_PEERS_DB)")
	cmd.Flags().StringVar(&kind, "db-kind", "kv", "what the db peers run: kv (corridor sample db) or postgres (corridor sample postgres, or any PostgreSQL)")
	cmd.Flags().BoolVar(&debug, "debug", false, "log every request")
	return cmd
}

func newSampleWebCmd() *cobra.Command {
	var listen, app string
	var debug bool
	cmd := &cobra.Command{
		Use:   "web",
		Short: "Run the web tier: an HTML page and JSON summary that call app",
		Long: `The web tier serves an HTML page (GET /, form POST /order), GET /api/summary
and POST /api/orders, calling the app tier round-robin with failover over
CORRIDOR_PEERS_APP (comma-separated addr:port), or over --app URLs when given.
Every reply names the web, app and db tasks that served it.`,
		Example: `  corridor sample web --listen :80 --app http://127.0.0.1:8080
  curl -s localhost/api/summary
  curl -s localhost/api/orders -H 'Content-Type: application/json' -d '{"item":"tea","qty":2}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			urls, err := sample.AppURLs(app)
			if err != nil {
				return err
			}
			return sampleRun(cmd, "web", listen, debug, func(ctx context.Context, ln net.Listener, id sample.Identity, log *slog.Logger) error {
				client, err := sample.NewAppClient(urls, log)
				if err != nil {
					return err
				}
				defer client.Close()
				log.Info("web using app peers", "peers", urls)
				web := &sample.Web{Apps: client, ID: id, Log: log}
				return sample.ServeHTTP(ctx, ln, web.Handler(), log)
			})
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":80", "TCP address to listen on")
	cmd.Flags().StringVar(&app, "app", "", "app base URLs, comma-separated (default: http:// + each of $CORRIDOR_PEERS_APP)")
	cmd.Flags().BoolVar(&debug, "debug", false, "log every request")
	return cmd
}
