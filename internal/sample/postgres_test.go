package sample

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// needPostgres skips when this machine has no PostgreSQL to run (CI
// installs Debian's postgresql package, so there it runs).
func needPostgres(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a real PostgreSQL: skipped with -short")
	}
	if _, err := FindPostgres(""); err != nil {
		t.Skipf("no PostgreSQL on this machine: %v", err)
	}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("postgres"); err != nil {
			t.Skipf("running as root and no user postgres to run PostgreSQL as: %v", err)
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// pgTier is RunPostgres in the background.
type pgTier struct {
	cancel context.CancelFunc
	done   chan error
}

func startPostgres(t *testing.T, o PGOptions) *pgTier {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &pgTier{cancel: cancel, done: make(chan error, 1)}
	o.Log, o.Output = quietLog(), testWriter{t}
	go func() { p.done <- RunPostgres(ctx, o) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *pgTier) stop(t *testing.T) {
	if p.cancel == nil {
		return
	}
	p.cancel()
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("RunPostgres: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("PostgreSQL did not stop within 30 s")
	}
	p.cancel = nil
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// waitPing pings until PostgreSQL answers (initdb and start take seconds).
func waitPing(t *testing.T, c *PGClient) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		server, err := c.Ping(ctx)
		cancel()
		if err == nil {
			return server
		}
		if time.Now().After(deadline) {
			t.Fatalf("PostgreSQL never answered: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPostgresTier runs the app tier on a real PostgreSQL made by
// RunPostgres: orders go in and come back with the db task's name, a
// wrong password is refused, the data survives a restart, and the
// private mount made for a root start goes away with the server.
func TestPostgresTier(t *testing.T) {
	needPostgres(t)
	dir := t.TempDir() // 0700 and root's when run as root: the mount is needed
	port := freePort(t)
	mountsBefore, _ := filepath.Glob(filepath.Join("/tmp", pgMountPrefix+"*"))
	opts := PGOptions{Data: dir, ListenAddr: "127.0.0.1", Port: port, Task: "shop/db/0", Password: "pw-test"}
	pg := startPostgres(t, opts)

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	t.Setenv("PGPASSWORD", "pw-test")
	c, err := NewPGClient([]string{addr}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if server := waitPing(t, c); server != "shop/db/0" {
		t.Fatalf("ping answered by %q, want shop/db/0", server)
	}

	app := startHTTP(t, (&App{DB: c, ID: Identity{Tier: "app", Task: "shop/app/0"}, Log: quietLog()}).Handler())
	code, b := postJSON(t, app+"/orders", `{"item": "tea", "qty": 2}`)
	if code != http.StatusCreated {
		t.Fatalf("POST /orders: %d %s", code, b)
	}
	var reply OrderReply
	if err := json.Unmarshal(b, &reply); err != nil {
		t.Fatal(err)
	}
	if reply.ServedBy.DB != "shop/db/0" || reply.Order.Item != "tea" {
		t.Fatalf("order reply %+v", reply)
	}

	// A LIST prefix is a prefix, not a LIKE pattern.
	ctx := context.Background()
	for _, k := range []string{"x%1", "xa1"} {
		if _, err := c.Set(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	if es, _, _, err := c.List(ctx, "x%"); err != nil || len(es) != 1 || es[0].Key != "x%1" {
		t.Fatalf("List(x%%) = %v, %v; want only x%%1", es, err)
	}

	// A wrong password is refused, and that is not "no db reachable".
	t.Setenv("PGPASSWORD", "wrong")
	bad, err := NewPGClient([]string{addr}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Ping(ctx); err == nil || errors.Is(err, ErrNoDB) || !strings.Contains(err.Error(), "password") {
		t.Errorf("ping with a wrong password: %v; want an authentication error", err)
	}
	bad.Close()
	t.Setenv("PGPASSWORD", "pw-test")

	// Restart: the order is still there.
	c.Close()
	pg.stop(t)
	pg2 := startPostgres(t, opts)
	c2, err := NewPGClient([]string{addr}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	waitPing(t, c2)
	entries, _, server, err := c2.List(ctx, orderPrefix)
	if err != nil || len(entries) != 1 || server != "shop/db/0" || !strings.Contains(entries[0].Value, `"tea"`) {
		t.Fatalf("orders after restart: %v from %q, err %v", entries, server, err)
	}

	// Once stopped, no mount directory of ours is left in /tmp.
	c2.Close()
	pg2.stop(t)
	after, _ := filepath.Glob(filepath.Join("/tmp", pgMountPrefix+"*"))
	if len(after) > len(mountsBefore) {
		t.Errorf("mount directories left in /tmp: %v (before: %v)", after, mountsBefore)
	}
}

// TestPostgresRefusesBadTaskName: cluster_name is printable ASCII.
func TestPostgresRefusesBadTaskName(t *testing.T) {
	err := RunPostgres(context.Background(), PGOptions{Data: t.TempDir(), Port: 5432, Task: "it's"})
	if err == nil || !strings.Contains(err.Error(), "cluster_name") {
		t.Fatalf("RunPostgres with a quote in the task: %v", err)
	}
}

func TestFindPostgresNamesTheFix(t *testing.T) {
	_, err := FindPostgres(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no postgres and initdb") {
		t.Fatalf("FindPostgres(empty dir) = %v", err)
	}
}
