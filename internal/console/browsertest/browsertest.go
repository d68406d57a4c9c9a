// Package browsertest drives the web console in a real browser for tests:
// Debian's headless Chromium through chromedp, with screenshots kept as
// test artifacts. It is imported by tests only.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// ArtifactsEnv names the directory where screenshots are written (one
// subdirectory per test); without it they go to the test's temporary
// directory. The Makefile sets it to test-artifacts/ in the checkout, so
// that after `make test` (what CI runs) the screenshots are there.
const ArtifactsEnv = "CORRIDOR_TEST_ARTIFACTS"

// Chromium finds the browser: Debian's chromium (scripts/deps.sh installs
// it). Without it the test skips, except under CI, where its absence is a
// broken setup and fails the test.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed; scripts/deps.sh installs it (make deps)")
	}
	t.Skip("chromium is not installed (apt-get install chromium, or make deps)")
	return ""
}

// Browser is one headless Chromium for one test.
type Browser struct {
	t   testing.TB
	Ctx context.Context
	dir string
	n   int
}

// New starts a headless Chromium that ends with the test. It accepts the
// test server's self-signed certificate (ignore-certificate-errors): the
// tests check the console, not the browser's trust store.
func New(t testing.TB) *Browser {
	t.Helper()
	bin := Chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1366, 820), // a laptop screen
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(func(f string, a ...any) { t.Logf("chromedp: "+f, a...) }))
	t.Cleanup(func() { cancel(); acancel() })
	// Start the browser now, so that a broken installation fails here. The
	// first run binds the browser to its context: ctx itself, not a
	// context with a deadline.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium (%s): %v", bin, err)
	}
	dir := t.TempDir()
	if base := os.Getenv(ArtifactsEnv); base != "" {
		dir = filepath.Join(base, regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatalf("artifacts directory: %v", err)
		}
	}
	return &Browser{t: t, Ctx: ctx, dir: dir}
}

// Do runs actions with a deadline, failing the test with what on error.
func (b *Browser) Do(what string, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.Screenshot("failed-" + what)
		b.t.Fatalf("%s: %v", what, err)
	}
}

// Screenshot writes a PNG of the whole page to the artifacts directory,
// numbered in the order taken, and logs its path.
func (b *Browser) Screenshot(name string) string {
	b.t.Helper()
	b.n++
	ctx, cancel := context.WithTimeout(b.Ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG (below: JPEG)
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return ""
	}
	p := filepath.Join(b.dir, fmt.Sprintf("%02d-%s.png", b.n, regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(name, "_")))
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Errorf("write screenshot: %v", err)
		return ""
	}
	b.t.Logf("screenshot: %s", p)
	return p
}

// Login opens the console at base (https://host:port) and logs in with
// token, waiting for the page to show its first state.
func (b *Browser) Login(base, token string) {
	b.t.Helper()
	b.Do("open login page", 30*time.Second,
		chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible(chromedp.ID("token")),
	)
	b.Screenshot("login")
	b.Do("log in", 30*time.Second,
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(chromedp.ID("graph")),
		chromedp.WaitReady(chromedp.CSS("body[data-revision]")),
	)
}

// Eval evaluates a JavaScript expression (awaiting it when it is a
// promise).
func Eval[T any](b *Browser, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(b.Ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// Eventually polls the JavaScript expression cond (which yields a
// boolean) until it is true or timeout passes; on timeout it takes a
// screenshot and fails the test, with the value of detail (a JavaScript
// expression yielding a string) at the last try.
func (b *Browser) Eventually(what string, timeout time.Duration, cond, detail string) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := Eval[bool](b, cond)
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			d, _ := Eval[string](b, detail)
			b.Screenshot("failed-" + what)
			b.t.Fatalf("%s: not true after %v (err %v; %s)", what, timeout, err, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
