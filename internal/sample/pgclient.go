package sample

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Backend is where the app tier keeps its records: the sample db tier
// (DBClient) or PostgreSQL (PGClient). Every call also returns the db task
// that answered, so that a reply can show which one served it.
type Backend interface {
	Ping(ctx context.Context) (server string, err error)
	Set(ctx context.Context, key, value string) (server string, err error)
	List(ctx context.Context, prefix string) (entries []Entry, truncated bool, server string, err error)
	Close()
}

var (
	_ Backend = (*DBClient)(nil)
	_ Backend = (*PGClient)(nil)
)

// PostgreSQL names of the sample: the role that `corridor sample postgres`
// makes, the database (initdb's default one) and the table of records.
const (
	PGUser     = "corridor"
	PGDatabase = "postgres"
	pgTable    = "corridor_records"
)

// PGClient keeps the app's records in a PostgreSQL table (key, value),
// through a small pgx pool over the db peers: the first that answers, in
// order, as DBClient does. The server that answered is PostgreSQL's
// cluster_name, which `corridor sample postgres` sets to its task name.
type PGClient struct {
	pool *pgxpool.Pool
}

// NewPGClient returns a client for the given "addr:port" PostgreSQL peers.
// The password, if any, comes from PGPASSWORD, as for every libpq client.
// It does not connect: the first request does.
func NewPGClient(peers []string, log *slog.Logger) (*PGClient, error) {
	if len(peers) == 0 {
		return nil, errors.New("db peers: none given (set CORRIDOR_PEERS_DB or --db)")
	}
	if log == nil {
		log = slog.Default()
	}
	cfg, err := pgxpool.ParseConfig(pgURL(peers))
	if err != nil {
		return nil, fmt.Errorf("db peers: %w", err)
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		// Idempotent, and cheap enough to run on every new connection: the
		// app needs no migration step of its own.
		_, err := c.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+pgTable+` (key text PRIMARY KEY, value text NOT NULL)`)
		if err != nil {
			return fmt.Errorf("create table %s: %w", pgTable, err)
		}
		log.Debug("connected to PostgreSQL", "server", c.PgConn().Conn().RemoteAddr().String())
		return nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("db peers: %w", err)
	}
	return &PGClient{pool: pool}, nil
}

// pgURL is a multi-host connection URL: libpq semantics, tried in order.
func pgURL(peers []string) string {
	u := url.URL{Scheme: "postgres", User: url.User(PGUser), Host: strings.Join(peers, ","), Path: "/" + PGDatabase}
	u.RawQuery = url.Values{"sslmode": {"disable"}, "application_name": {"corridor-sample-app"}}.Encode()
	// Peers are IP:port, which url.URL keeps as they are; IPv6 ones come
	// bracketed from net.JoinHostPort.
	return u.String()
}

// Ping checks that PostgreSQL answers and returns its task name.
func (c *PGClient) Ping(ctx context.Context) (string, error) {
	var server string
	err := c.pool.QueryRow(ctx, `SELECT current_setting('cluster_name')`).Scan(&server)
	return server, pgErr("ping", err)
}

// Set stores a value (insert or replace) and returns the task name of the
// PostgreSQL that stored it.
func (c *PGClient) Set(ctx context.Context, key, value string) (string, error) {
	var server string
	err := c.pool.QueryRow(ctx, `INSERT INTO `+pgTable+` (key, value) VALUES ($1, $2)
		ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
		RETURNING current_setting('cluster_name')`, key, value).Scan(&server)
	return server, pgErr("set", err)
}

// List returns the records under prefix, by key, at most MaxListEntries,
// and whether there were more.
func (c *PGClient) List(ctx context.Context, prefix string) ([]Entry, bool, string, error) {
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return nil, false, "", pgErr("list", err)
	}
	defer conn.Release()
	var server string
	if err := conn.QueryRow(ctx, `SELECT current_setting('cluster_name')`).Scan(&server); err != nil {
		return nil, false, "", pgErr("list", err)
	}
	// starts_with, not LIKE: a prefix holding % or _ means itself.
	rows, err := conn.Query(ctx, `SELECT key, value FROM `+pgTable+` WHERE starts_with(key, $1) ORDER BY key LIMIT $2`, prefix, MaxListEntries+1)
	if err != nil {
		return nil, false, server, pgErr("list", err)
	}
	entries, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Entry, error) {
		var e Entry
		err := r.Scan(&e.Key, &e.Value)
		return e, err
	})
	if err != nil {
		return nil, false, server, pgErr("list", err)
	}
	truncated := len(entries) > MaxListEntries
	if truncated {
		entries = entries[:MaxListEntries]
	}
	return entries, truncated, server, nil
}

// Close closes the pool.
func (c *PGClient) Close() { c.pool.Close() }

// pgErr names the operation; a failure to reach any peer is ErrNoDB, as
// with DBClient. An error PostgreSQL itself sent (a wrong password
// included) means it was reached, and is not.
func pgErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var se *pgconn.PgError
	if errors.As(err, &se) {
		return fmt.Errorf("postgres %s: %w", op, err)
	}
	var ne net.Error
	var ce *pgconn.ConnectError
	if errors.As(err, &ne) || errors.As(err, &ce) {
		return fmt.Errorf("postgres %s: %w: %w", op, ErrNoDB, err)
	}
	return fmt.Errorf("postgres %s: %w", op, err)
}
