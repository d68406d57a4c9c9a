package sample

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"
)

// DBError is an ERR reply from the db: the request was understood as
// wrong, so retrying it elsewhere would not help.
type DBError struct{ Msg string }

func (e *DBError) Error() string { return "db: " + e.Msg }

// ErrNoDB is returned when no db peer could be reached.
var ErrNoDB = errors.New("sample: no db peer reachable")

// DBClient talks to the db tier. It connects to the first reachable peer of
// its list, in order (the list comes from CORRIDOR_PEERS_DB), keeps a few
// idle connections, and retries a request once on a fresh connection when
// the one it used broke: every db command is idempotent, so a retry after
// an unknown outcome is safe.
type DBClient struct {
	peers       []string
	log         *slog.Logger
	dialTimeout time.Duration
	idle        chan *dbConn
}

type dbConn struct {
	c      net.Conn
	r      *bufio.Reader
	server string // the db task that answers on it, from PING
}

// NewDBClient returns a client for the given "addr:port" peers.
func NewDBClient(peers []string, log *slog.Logger) (*DBClient, error) {
	if len(peers) == 0 {
		return nil, errors.New("db peers: none given (set CORRIDOR_PEERS_DB or --db)")
	}
	if log == nil {
		log = slog.Default()
	}
	return &DBClient{peers: peers, log: log, dialTimeout: 2 * time.Second, idle: make(chan *dbConn, 4)}, nil
}

// Ping checks that a db answers and returns its task name.
func (c *DBClient) Ping(ctx context.Context) (string, error) {
	_, server, err := c.do(ctx, Command{Op: OpPing})
	return server, err
}

// Set stores a value and returns the task name of the db that stored it.
func (c *DBClient) Set(ctx context.Context, key, value string) (string, error) {
	if strings.ContainsAny(value, "\r\n") {
		return "", errors.New("value: must not contain CR or LF")
	}
	_, server, err := c.do(ctx, Command{Op: OpSet, Key: key, Value: value})
	return server, err
}

// Get returns a value, whether it exists, and the db task that answered.
func (c *DBClient) Get(ctx context.Context, key string) (value string, found bool, server string, err error) {
	lines, server, err := c.do(ctx, Command{Op: OpGet, Key: key})
	if err != nil {
		return "", false, server, err
	}
	if lines[0] == "NOTFOUND" {
		return "", false, server, nil
	}
	return strings.TrimPrefix(lines[0], "VALUE "), true, server, nil
}

// List returns the entries under prefix (at most MaxListEntries), whether
// the db left some out, and the db task that answered.
func (c *DBClient) List(ctx context.Context, prefix string) (entries []Entry, truncated bool, server string, err error) {
	lines, server, err := c.do(ctx, Command{Op: OpList, Key: prefix})
	if err != nil {
		return nil, false, server, err
	}
	for _, l := range lines[:len(lines)-1] {
		kv := strings.TrimPrefix(l, "ENTRY ")
		k, v, _ := strings.Cut(kv, " ")
		entries = append(entries, Entry{Key: k, Value: v})
	}
	return entries, strings.HasSuffix(lines[len(lines)-1], " truncated"), server, nil
}

// Close drops idle connections.
func (c *DBClient) Close() {
	for {
		select {
		case dc := <-c.idle:
			dc.c.Close()
		default:
			return
		}
	}
}

// do sends cmd and returns its reply lines.
func (c *DBClient) do(ctx context.Context, cmd Command) ([]string, string, error) {
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		dc, err := c.get(ctx, attempt > 0)
		if err != nil {
			return nil, "", err
		}
		lines, err := dc.roundTrip(ctx, cmd)
		var dbErr *DBError
		if err == nil || errors.As(err, &dbErr) {
			c.put(dc)
			return lines, dc.server, err
		}
		dc.c.Close()
		lastErr = err
		c.log.Debug("db connection broke; retrying", "server", dc.server, "err", err)
	}
	return nil, "", lastErr
}

// get returns an idle connection, or dials one. fresh skips idle ones, for
// a retry after a connection broke (the others may be just as stale).
func (c *DBClient) get(ctx context.Context, fresh bool) (*dbConn, error) {
	if !fresh {
		select {
		case dc := <-c.idle:
			return dc, nil
		default:
		}
	}
	var errs []error
	for _, p := range c.peers {
		dc, err := c.dial(ctx, p)
		if err == nil {
			return dc, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("%w: %w", ErrNoDB, errors.Join(errs...))
}

func (c *DBClient) dial(ctx context.Context, addr string) (*dbConn, error) {
	d := net.Dialer{Timeout: c.dialTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial db %s: %w", addr, err)
	}
	dc := &dbConn{c: nc, r: bufio.NewReaderSize(nc, MaxLineLen)}
	lines, err := dc.roundTrip(ctx, Command{Op: OpPing})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("db %s: ping: %w", addr, err)
	}
	dc.server = strings.TrimPrefix(lines[0], "OK ")
	return dc, nil
}

func (c *DBClient) put(dc *dbConn) {
	select {
	case c.idle <- dc:
	default:
		dc.c.Close()
	}
}

// roundTrip writes one command and reads its whole reply.
func (dc *dbConn) roundTrip(ctx context.Context, cmd Command) ([]string, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(5 * time.Second)
	}
	dc.c.SetDeadline(deadline)
	if _, err := io.WriteString(dc.c, cmd.String()+"\n"); err != nil {
		return nil, err
	}
	var lines []string
	for {
		// Replies are bounded like requests: a longer line is not from a
		// db speaking this protocol.
		raw, err := dc.r.ReadSlice('\n')
		if err != nil {
			return nil, fmt.Errorf("read db reply: %w", err)
		}
		line := strings.TrimSuffix(string(raw), "\n")
		if msg, ok := strings.CutPrefix(line, "ERR "); ok {
			return nil, &DBError{Msg: msg}
		}
		lines = append(lines, line)
		if cmd.Op != OpList {
			return lines, nil
		}
		if rest, ok := strings.CutPrefix(line, "END "); ok {
			n, _, _ := strings.Cut(rest, " ")
			if want, err := strconv.Atoi(n); err != nil || want != len(lines)-1 {
				return nil, fmt.Errorf("db LIST reply: END says %q but %d entries came", n, len(lines)-1)
			}
			return lines, nil
		}
		if !strings.HasPrefix(line, "ENTRY ") {
			return nil, fmt.Errorf("db LIST reply: unexpected line %q", truncate(line, 40))
		}
		if len(lines) > MaxListEntries+1 {
			return nil, fmt.Errorf("db LIST reply: more than %d entries", MaxListEntries)
		}
	}
}
