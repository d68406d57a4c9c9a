package sample

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// dbTier is a db server running in-process on loopback.
type dbTier struct {
	t      *testing.T
	dir    string
	addr   string
	store  *Store
	cancel context.CancelFunc
	done   chan error
}

func startDB(t *testing.T, dir, addr, task string) *dbTier {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	d := &dbTier{t: t, dir: dir, addr: ln.Addr().String(), store: store, cancel: cancel, done: make(chan error, 1)}
	srv := &DBServer{Store: store, ID: Identity{Tier: "db", Task: task}, Log: quietLog()}
	go func() { d.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(d.stop)
	return d
}

func (d *dbTier) stop() {
	if d.cancel == nil {
		return
	}
	d.cancel()
	select {
	case err := <-d.done:
		if err != nil {
			d.t.Errorf("db Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		d.t.Error("db did not stop within 5s")
	}
	d.store.Close()
	d.cancel = nil
}

// startHTTP serves h on a loopback port until the test ends.
func startHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeHTTP(ctx, ln, h, quietLog()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func startApp(t *testing.T, task string, dbPeers ...string) string {
	t.Helper()
	c, err := NewDBClient(dbPeers, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return startHTTP(t, (&App{DB: c, ID: Identity{Tier: "app", Task: task}, Log: quietLog()}).Handler())
}

func startWeb(t *testing.T, task string, apps ...string) string {
	t.Helper()
	c, err := NewAppClient(apps, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return startHTTP(t, (&Web{Apps: c, ID: Identity{Tier: "web", Task: task}, Log: quietLog()}).Handler())
}

func postJSON(t *testing.T, u, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(u, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func get(t *testing.T, u string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func summary(t *testing.T, web string) Summary {
	t.Helper()
	code, b := get(t, web+"/api/summary")
	if code != http.StatusOK {
		t.Fatalf("GET /api/summary: %d %s", code, b)
	}
	var s Summary
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestThreeTiersEndToEnd(t *testing.T) {
	dir := t.TempDir()
	db := startDB(t, dir, "", "db-0")
	app := startApp(t, "app-0", "127.0.0.1:1", db.addr) // first peer is dead: "first reachable" wins
	web := startWeb(t, "web-0", app)

	// Through the JSON API of web.
	code, b := postJSON(t, web+"/api/orders", `{"item":"green tea","qty":3}`)
	if code != http.StatusCreated {
		t.Fatalf("POST /api/orders: %d %s", code, b)
	}
	var reply OrderReply
	json.Unmarshal(b, &reply)
	if reply.ServedBy != (Served{Web: "web-0", App: "app-0", DB: "db-0"}) {
		t.Fatalf("servedBy = %+v, want every tier named", reply.ServedBy)
	}
	if reply.Order.ID == "" || reply.Order.Item != "green tea" || reply.Order.Qty != 3 || reply.Order.App != "app-0" {
		t.Fatalf("order = %+v", reply.Order)
	}

	// Through the HTML form: a redirect back to the page, which lists it.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.PostForm(web+"/order", url.Values{"item": {"<b>oolong</b>"}, "qty": {"2"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/?created=") {
		t.Fatalf("form post: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	code, page := get(t, web+resp.Header.Get("Location"))
	if code != http.StatusOK {
		t.Fatalf("GET /: %d", code)
	}
	for _, want := range []string{"green tea", "&lt;b&gt;oolong&lt;/b&gt;", "web-0", "app-0", "db-0", `class="new"`, "Orders (2)"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("page lacks %q", want)
		}
	}

	s := summary(t, web)
	if s.OrderCount != 2 || s.Recent[0].Item != "<b>oolong</b>" || s.Recent[1].Item != "green tea" {
		t.Fatalf("summary = %+v, want both orders, newest first", s)
	}
	if s.ServedBy != (Served{Web: "web-0", App: "app-0", DB: "db-0"}) {
		t.Fatalf("summary servedBy = %+v", s.ServedBy)
	}

	// Restart db on the same address and directory: the orders survive, and
	// app recovers from its now-dead pooled connection on its own.
	db.stop()
	db2 := startDB(t, dir, db.addr, "db-1")
	s = summary(t, web)
	if s.OrderCount != 2 || s.ServedBy.DB != "db-1" {
		t.Fatalf("after db restart: %d orders served by db %q; want 2 from db-1", s.OrderCount, s.ServedBy.DB)
	}
	if code, b := postJSON(t, web+"/api/orders", `{"item":"sencha","qty":1}`); code != http.StatusCreated {
		t.Fatalf("POST after restart: %d %s", code, b)
	}
	db2.stop()
	db3 := startDB(t, dir, db.addr, "db-2")
	_ = db3
	if s = summary(t, web); s.OrderCount != 3 {
		t.Fatalf("after a second restart: %d orders, want 3", s.OrderCount)
	}
}

func TestWebRoundRobinAndFailover(t *testing.T) {
	db := startDB(t, t.TempDir(), "", "db-0")
	appA := startApp(t, "app-a", db.addr)
	appB := startApp(t, "app-b", db.addr)
	dead := "http://127.0.0.1:1"
	web := startWeb(t, "web-0", dead, appA, dead, appB)

	seen := map[string]int{}
	for i := range 8 {
		code, b := postJSON(t, web+"/api/orders", fmt.Sprintf(`{"item":"item %d","qty":1}`, i))
		if code != http.StatusCreated {
			t.Fatalf("order %d: %d %s", i, code, b)
		}
		var r OrderReply
		json.Unmarshal(b, &r)
		seen[r.ServedBy.App]++
	}
	if seen["app-a"] == 0 || seen["app-b"] == 0 || len(seen) != 2 {
		t.Fatalf("orders per app = %v, want both live apps used and nothing else", seen)
	}
	if s := summary(t, web); s.OrderCount != 8 {
		t.Fatalf("summary counts %d orders, want 8", s.OrderCount)
	}
}

func TestBadInputGetsErrors(t *testing.T) {
	db := startDB(t, t.TempDir(), "", "db-0")
	app := startApp(t, "app-0", db.addr)
	web := startWeb(t, "web-0", app)

	for _, c := range []struct {
		url, body, want string
		code            int
	}{
		{app + "/orders", `{"item":"tea"`, "body:", 400},
		{app + "/orders", `{"item":"tea","qty":1,"price":3}`, "unknown field", 400},
		{app + "/orders", `{"item":"tea","qty":0}`, "qty:", 400},
		{app + "/orders", `{"item":"tea","qty":"1"}`, "body:", 400},
		{app + "/orders", `{"item":"  ","qty":1}`, "item:", 400},
		{app + "/orders", `{"item":"` + strings.Repeat("x", MaxItemLen+1) + `","qty":1}`, "item:", 400},
		{app + "/orders", `{"item":"a\u0007b","qty":1}`, "control", 400},
		{app + "/orders", `{"item":"tea","qty":1}{}`, "more than one", 400},
		{web + "/api/orders", `{"item":"tea","qty":-4}`, "qty:", 400},
		{web + "/api/orders", `[]`, "body:", 400},
	} {
		code, b := postJSON(t, c.url, c.body)
		if code != c.code || !strings.Contains(string(b), c.want) {
			t.Errorf("POST %s %s: %d %s; want %d mentioning %q", c.url, c.body, code, b, c.code, c.want)
		}
	}
	// A big body is cut off, not read whole.
	if code, _ := postJSON(t, app+"/orders", `{"item":"`+strings.Repeat("x", 2*maxBody)+`","qty":1}`); code != 400 {
		t.Errorf("huge body: %d, want 400", code)
	}
	resp, err := http.PostForm(web+"/order", url.Values{"item": {"tea"}, "qty": {"lots"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "qty: must be a whole number") {
		t.Errorf("form with qty=lots: %d, page lacks the error", resp.StatusCode)
	}
	if code, _ := get(t, app+"/nope"); code != 404 {
		t.Errorf("GET /nope: %d", code)
	}
	// Nothing bad was stored, and the tiers still work.
	if s := summary(t, web); s.OrderCount != 0 {
		t.Fatalf("bad input stored %d orders", s.OrderCount)
	}
}

func TestTiersReportUnreachablePeers(t *testing.T) {
	// An app whose db is gone, and a web whose app is gone.
	app := startApp(t, "app-0", "127.0.0.1:1")
	if code, b := postJSON(t, app+"/orders", `{"item":"tea","qty":1}`); code != http.StatusBadGateway || !strings.Contains(string(b), "no db peer reachable") {
		t.Errorf("app without db: %d %s", code, b)
	}
	if code, _ := get(t, app+"/healthz"); code != 200 {
		t.Errorf("shallow healthz without db: %d, want 200", code)
	}
	if code, b := get(t, app+"/healthz?deep=1"); code != 503 || !strings.Contains(string(b), "dbError") {
		t.Errorf("deep healthz without db: %d %s", code, b)
	}
	web := startWeb(t, "web-0", "http://127.0.0.1:1")
	if code, b := get(t, web+"/api/summary"); code != http.StatusBadGateway || !strings.Contains(string(b), "app unreachable") {
		t.Errorf("web without app: %d %s", code, b)
	}
	if code, b := get(t, web+"/"); code != http.StatusBadGateway || !strings.Contains(string(b), "unreached") {
		t.Errorf("web page without app: %d", code)
	}
	// A web whose app is up but whose db is down passes app's error on.
	web2 := startWeb(t, "web-1", app)
	if code, b := get(t, web2+"/api/summary"); code != http.StatusBadGateway || !strings.Contains(string(b), "app failed") {
		t.Errorf("web with app without db: %d %s", code, b)
	}
}

// TestDBProtocolOverTCP talks to the db as a raw client would.
func TestDBProtocolOverTCP(t *testing.T) {
	db := startDB(t, t.TempDir(), "", "db-raw")
	c, err := net.Dial("tcp", db.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	// Pipelined, with bad commands in between: each gets its own answer and
	// the connection goes on.
	io.WriteString(c, "PING\nBOGUS x\nSET k1 v 1\nGET k1\nGET missing\nSET bad\nSET k2 v2\nLIST k\n\nPING\n")
	want := []string{"OK db-raw", `ERR unknown command "BOGUS": want PING, SET, GET or LIST`, "OK", "VALUE v 1", "NOTFOUND",
		"ERR SET needs a value after the key (it may be empty, but the space must be there)", "OK",
		"ENTRY k1 v 1", "ENTRY k2 v2", "END 2", "ERR empty command", "OK db-raw"}
	for _, w := range want {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading answer %q: %v", w, err)
		}
		if got != w+"\n" {
			t.Fatalf("answer %q, want %q", got, w)
		}
	}
	// An over-long line gets an error, then the connection is closed.
	io.WriteString(c, "SET k "+strings.Repeat("x", MaxLineLen+10)+"\n")
	got, _ := r.ReadString('\n')
	if !strings.HasPrefix(got, "ERR line longer") {
		t.Fatalf("over-long line: %q", got)
	}
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("connection stayed open after an over-long line")
	}
	// The server is still fine for others.
	c2, err := net.Dial("tcp", db.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	io.WriteString(c2, "GET k2\n")
	if got, _ := bufio.NewReader(c2).ReadString('\n'); got != "VALUE v2\n" {
		t.Fatalf("after a bad client: %q", got)
	}
}

func TestDBConcurrentClientsAndShutdown(t *testing.T) {
	db := startDB(t, t.TempDir(), "", "db-0")
	client, err := NewDBClient([]string{db.addr}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				if _, err := client.Set(ctx, fmt.Sprintf("c/%d/%d", w, i), "v"); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	entries, truncated, server, err := client.List(ctx, "c/")
	if err != nil || len(entries) != 100 || truncated || server != "db-0" {
		t.Fatalf("List = %d entries, truncated %v, server %q, err %v", len(entries), truncated, server, err)
	}
	// An idle client is held open; shutdown must not wait for it to leave.
	idle, err := net.Dial("tcp", db.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	start := time.Now()
	db.stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("shutdown took %v with an idle client", d)
	}
	if _, err := client.Ping(ctx); err == nil {
		t.Fatal("Ping succeeded after shutdown")
	}
}

func TestDBServerBusy(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, dir)
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&DBServer{Store: store, Log: quietLog(), MaxConns: 1}).Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()

	first, _ := net.Dial("tcp", ln.Addr().String())
	defer first.Close()
	io.WriteString(first, "PING\n")
	bufio.NewReader(first).ReadString('\n') // the first client is surely registered now
	second, _ := net.Dial("tcp", ln.Addr().String())
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, _ := bufio.NewReader(second).ReadString('\n'); !strings.HasPrefix(got, "ERR busy") {
		t.Fatalf("client over the limit got %q, want ERR busy", got)
	}
}

func TestIdentityAndPeersFromEnv(t *testing.T) {
	t.Setenv(EnvTask, "shop-web-1")
	t.Setenv(EnvAddr, "100.64.0.7")
	if id := IdentityFromEnv("web"); id != (Identity{Tier: "web", Task: "shop-web-1", Addr: "100.64.0.7"}) {
		t.Fatalf("IdentityFromEnv = %+v", id)
	}
	t.Setenv(EnvPeersDB, "100.64.0.9:5432,100.64.0.10:5432")
	if p, err := DBPeers(""); err != nil || len(p) != 2 {
		t.Fatalf("DBPeers from env = %v, %v", p, err)
	}
	if p, err := DBPeers("127.0.0.1:7"); err != nil || len(p) != 1 || p[0] != "127.0.0.1:7" {
		t.Fatalf("DBPeers(flag) = %v, %v; want the flag to win", p, err)
	}
	t.Setenv(EnvPeersApp, "100.64.0.3:8080")
	if u, err := AppURLs(""); err != nil || len(u) != 1 || u[0] != "http://100.64.0.3:8080" {
		t.Fatalf("AppURLs from env = %v, %v", u, err)
	}
	t.Setenv(EnvPeersApp, "nonsense")
	if _, err := AppURLs(""); err == nil || !strings.Contains(err.Error(), EnvPeersApp) {
		t.Fatalf("AppURLs with a bad env: %v, want an error naming %s", err, EnvPeersApp)
	}
	t.Setenv(EnvPeersDB, "")
	if _, err := DBPeers(""); err == nil || !strings.Contains(err.Error(), "--db") {
		t.Fatalf("DBPeers with nothing: %v", err)
	}
}
