package console

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

const token = "test-admin-token-0123456789"

// fakeSource is a store of one revision that the test moves.
type fakeSource struct {
	mu      sync.Mutex
	rev     int64
	changed chan struct{}
	closed  bool
}

func newFake() *fakeSource { return &fakeSource{rev: 1, changed: make(chan struct{})} }

func (f *fakeSource) State(context.Context) (*State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &State{Revision: f.rev, Now: time.Now(), Apps: []api.App{{Name: "shop"}}}, nil
}

func (f *fakeSource) Wait(ctx context.Context, rev int64) (int64, bool) {
	f.mu.Lock()
	if f.rev > rev {
		defer f.mu.Unlock()
		return f.rev, true
	}
	if f.closed {
		f.mu.Unlock()
		return rev, false
	}
	ch := f.changed
	f.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return rev, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev, f.rev > rev
}

func (f *fakeSource) bump() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeSource) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	close(f.changed)
	f.changed = make(chan struct{})
}

func start(t *testing.T, src Source) (*httptest.Server, *http.Client) {
	t.Helper()
	c, err := New(Config{Source: src, Token: func() string { return token }, MinInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(c.Handler())
	t.Cleanup(ts.Close)
	cl := ts.Client()
	cl.Jar, _ = cookiejar.New(nil)
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return ts, cl
}

func login(t *testing.T, ts *httptest.Server, cl *http.Client, tok string) *http.Response {
	t.Helper()
	resp, err := cl.PostForm(ts.URL+"/ui/login", url.Values{"token": {tok}})
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func status(t *testing.T, cl *http.Client, u string) int {
	t.Helper()
	resp, err := cl.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestLogin(t *testing.T) {
	ts, cl := start(t, newFake())
	if got := status(t, cl, ts.URL+"/ui/api/state"); got != http.StatusUnauthorized {
		t.Fatalf("state before login: %d, want 401", got)
	}
	if got := status(t, cl, ts.URL+"/ui/"); got != http.StatusSeeOther {
		t.Fatalf("index before login: %d, want a redirect to the login page", got)
	}
	if r := login(t, ts, cl, "wrong"); r.StatusCode != http.StatusUnauthorized || len(r.Cookies()) != 0 {
		t.Fatalf("login with a wrong token: %d, cookies %v; want 401 and none", r.StatusCode, r.Cookies())
	}
	if got := status(t, cl, ts.URL+"/ui/api/state"); got != http.StatusUnauthorized {
		t.Fatalf("state after a wrong login: %d, want 401", got)
	}
	r := login(t, ts, cl, token)
	if r.StatusCode != http.StatusSeeOther || len(r.Cookies()) != 1 {
		t.Fatalf("login: %d, cookies %v", r.StatusCode, r.Cookies())
	}
	ck := r.Cookies()[0]
	if !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteStrictMode || ck.Path != Prefix || strings.Contains(ck.Value, token) {
		t.Fatalf("session cookie %+v: want HttpOnly, Secure, SameSite=Strict, Path=/ui/, without the token", ck)
	}
	if got := status(t, cl, ts.URL+"/ui/api/state"); got != http.StatusOK {
		t.Fatalf("state after login: %d", got)
	}
	resp, err := cl.Get(ts.URL + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("index: %d, CSP %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}

	// A form posted from another site is refused, token or not.
	req, _ := http.NewRequest(http.MethodPost, ts.URL+"/ui/login", strings.NewReader("token="+token))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	resp2, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusForbidden || len(resp2.Cookies()) != 0 {
		t.Fatalf("cross-site login: %d, cookies %v; want 403 and none", resp2.StatusCode, resp2.Cookies())
	}
}

func TestSession(t *testing.T) {
	now := time.Now()
	v := sessionValue(token, now.Add(time.Hour))
	if !checkSession(token, v, now) {
		t.Fatal("a fresh session is refused")
	}
	if checkSession(token, v, now.Add(2*time.Hour)) {
		t.Error("an expired session is accepted")
	}
	if checkSession("another token", v, now) {
		t.Error("a session survives a change of the admin token")
	}
	exp, mac, _ := strings.Cut(v, ".")
	later := sessionValue(token, now.Add(48*time.Hour))
	laterExp, _, _ := strings.Cut(later, ".")
	if checkSession(token, laterExp+"."+mac, now) || checkSession(token, exp+".", now) || checkSession(token, "", now) {
		t.Error("a session with an edited expiry or MAC is accepted")
	}
	if checkSession("", sessionValue("", now.Add(time.Hour)), now) {
		t.Error("an empty token makes sessions")
	}
}

// TestWatch: the live stream sends the state at once, again at each new
// revision, and ends when the source closes (server shutdown).
func TestWatch(t *testing.T) {
	src := newFake()
	ts, cl := start(t, src)
	login(t, ts, cl, token)
	resp, err := cl.Get(ts.URL + "/ui/api/watch")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	events := make(chan State, 10)
	done := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var st State
				if err := json.Unmarshal([]byte(d), &st); err != nil {
					done <- err
					return
				}
				events <- st
			}
		}
		done <- sc.Err()
	}()
	next := func() State {
		t.Helper()
		select {
		case st := <-events:
			return st
		case err := <-done:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("no state within 10s")
		}
		return State{}
	}
	if st := next(); st.Revision != 1 || len(st.Apps) != 1 {
		t.Fatalf("first state %+v", st)
	}
	src.bump()
	if st := next(); st.Revision != 2 {
		t.Fatalf("state after a change: revision %d, want 2", st.Revision)
	}
	src.close()
	select {
	case <-done:
	case st := <-events:
		t.Fatalf("state %d after close", st.Revision)
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not end when the source closed")
	}
}

// TestVendoredD3 checks that the D3 the console serves is the file
// scripts/vendor-js.sh pins, and that the pages load nothing from
// elsewhere (the console works offline).
func TestVendoredD3(t *testing.T) {
	script, err := os.ReadFile("../../scripts/vendor-js.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^sha256=([0-9a-f]{64})$`).FindSubmatch(script)
	if m == nil {
		t.Fatal("no sha256= line in scripts/vendor-js.sh")
	}
	ts, cl := start(t, newFake())
	resp, err := cl.Get(ts.URL + "/ui/static/vendor/d3.min.js")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	sum := sha256.Sum256(body)
	if resp.StatusCode != http.StatusOK || hex.EncodeToString(sum[:]) != string(m[1]) {
		t.Fatalf("d3.min.js: %d, sha256 %x; want %s (run scripts/vendor-js.sh)", resp.StatusCode, sum, m[1])
	}
	for _, f := range []string{"assets/index.html", "assets/login.html", "assets/console.js", "assets/console.css"} {
		b, err := assets.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if loc := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`).Find(b); loc != nil {
			t.Errorf("%s loads from another origin: %s", f, loc)
		}
	}
}
