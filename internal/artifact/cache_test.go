package artifact

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/spec"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// served is a fetcher of fixed content that counts its calls.
type served struct {
	data  map[string][]byte // by URL
	calls atomic.Int32
	gate  chan struct{} // when set, each fetch waits for it to close
	err   error
}

func (s *served) fetch(ctx context.Context, u string) (io.ReadCloser, error) {
	s.calls.Add(1)
	if s.gate != nil {
		<-s.gate
	}
	if s.err != nil {
		return nil, s.err
	}
	b, ok := s.data[u]
	if !ok {
		return nil, Permanent(errors.New("HTTP 404 Not Found"))
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func newCache(t *testing.T, s *served, mod func(*Config)) *Cache {
	t.Helper()
	cfg := Config{Dir: t.TempDir(), Logger: quiet, Fetchers: map[string]Fetcher{"https": s.fetch}, BackoffMin: time.Millisecond, BackoffMax: time.Hour}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// noParts fails if a temporary file or directory is left in the cache.
func noParts(t *testing.T, c *Cache) {
	t.Helper()
	for _, d := range []string{c.blobs(), c.trees()} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".part-") {
				t.Errorf("leftover %s in %s", e.Name(), d)
			}
		}
	}
}

func TestResolveGoodHash(t *testing.T) {
	prog := []byte("#!/bin/sh\necho hello\n")
	s := &served{data: map[string][]byte{"https://x/web": prog}}
	c := newCache(t, s, nil)
	p, err := c.Resolve(context.Background(), spec.Artifact{URL: "https://x/web", SHA256: sum(prog)})
	if err != nil {
		t.Fatal(err)
	}
	if p.Path != c.BlobPath(sum(prog)) || p.Root != "" {
		t.Fatalf("program %+v", p)
	}
	got, err := os.ReadFile(p.Path)
	if err != nil || !bytes.Equal(got, prog) {
		t.Fatalf("content %q, %v", got, err)
	}
	if st, _ := os.Stat(p.Path); st.Mode().Perm() != 0o555 {
		t.Errorf("mode %v, want 0555", st.Mode())
	}
	// A second resolve uses the cache.
	if _, err := c.Resolve(context.Background(), spec.Artifact{URL: "https://x/web", SHA256: sum(prog)}); err != nil {
		t.Fatal(err)
	}
	if n := s.calls.Load(); n != 1 {
		t.Errorf("fetched %d times, want 1", n)
	}
	noParts(t, c)
}

func TestResolveWrongHash(t *testing.T) {
	prog := []byte("the real program")
	want := sum([]byte("another program"))
	s := &served{data: map[string][]byte{"https://x/web": prog}}
	c := newCache(t, s, nil)
	_, err := c.Resolve(context.Background(), spec.Artifact{URL: "https://x/web", SHA256: want})
	if !errors.Is(err, ErrHashMismatch) || !IsPermanent(err) {
		t.Fatalf("err %v, want a sha256 mismatch", err)
	}
	if !strings.Contains(err.Error(), sum(prog)) {
		t.Errorf("error %q does not say the hash got", err)
	}
	if _, err := os.Stat(c.BlobPath(want)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file is under the wanted hash: %v", err)
	}
	noParts(t, c)
	// A permanent failure is not fetched again before the backoff.
	_, err = c.Resolve(context.Background(), spec.Artifact{URL: "https://x/web", SHA256: want})
	if !errors.Is(err, ErrHashMismatch) || !strings.Contains(err.Error(), "next try in") {
		t.Errorf("second resolve: %v", err)
	}
	if n := s.calls.Load(); n != 1 {
		t.Errorf("fetched %d times, want 1", n)
	}
}

func TestResolveOversized(t *testing.T) {
	prog := bytes.Repeat([]byte("x"), 1001)
	s := &served{data: map[string][]byte{"https://x/web": prog}}
	c := newCache(t, s, func(c *Config) { c.MaxSize = 1000 })
	_, err := c.Resolve(context.Background(), spec.Artifact{URL: "https://x/web", SHA256: sum(prog)})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err %v, want too large", err)
	}
	if _, err := os.Stat(c.BlobPath(sum(prog))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an oversized file was kept: %v", err)
	}
	noParts(t, c)
	// Exactly at the limit is fine.
	prog = prog[:1000]
	s.data["https://x/web2"] = prog
	if _, err := c.Resolve(context.Background(), spec.Artifact{URL: "https://x/web2", SHA256: sum(prog)}); err != nil {
		t.Fatal(err)
	}
}

func TestResolveTransientRetries(t *testing.T) {
	prog := []byte("program")
	s := &served{data: map[string][]byte{"https://x/web": prog}, err: errors.New("connection refused")}
	c := newCache(t, s, func(c *Config) { c.Attempts = 3 })
	_, err := c.Resolve(context.Background(), spec.Artifact{URL: "https://x/web", SHA256: sum(prog)})
	if err == nil || IsPermanent(err) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("err %v", err)
	}
	if n := s.calls.Load(); n != 3 {
		t.Errorf("tried %d times, want 3", n)
	}
	// Once the source is back (and the backoff passed), it works.
	s.err = nil
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err = c.Resolve(context.Background(), spec.Artifact{URL: "https://x/web", SHA256: sum(prog)}); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestResolveConcurrentSameHash(t *testing.T) {
	prog := []byte("shared program")
	s := &served{data: map[string][]byte{"https://x/web": prog}, gate: make(chan struct{})}
	c := newCache(t, s, nil)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.Resolve(context.Background(), spec.Artifact{URL: "https://x/web", SHA256: sum(prog)})
		}()
	}
	// Wait until one fetch is under way, then let it finish.
	for s.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(s.gate)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("resolve %d: %v", i, err)
		}
	}
	if n := s.calls.Load(); n != 1 {
		t.Errorf("fetched %d times, want 1 (shared)", n)
	}
	noParts(t, c)
}

type entry struct {
	name, link string
	typ        byte
	body       string
	mode       int64
}

func tarGz(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body))}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func TestResolveArchive(t *testing.T) {
	arc := tarGz(t, []entry{
		{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "bin/web", typ: tar.TypeReg, body: "#!/bin/sh\n", mode: 0o4755},
		{name: "share/data.txt", typ: tar.TypeReg, body: "data"},
		{name: "bin/web-link", typ: tar.TypeSymlink, link: "web"},
		{name: "share/hard", typ: tar.TypeLink, link: "share/data.txt"},
	})
	s := &served{data: map[string][]byte{"https://x/web.tar.gz": arc}}
	c := newCache(t, s, nil)
	p, err := c.Resolve(context.Background(), spec.Artifact{URL: "https://x/web.tar.gz", SHA256: sum(arc), Run: "bin/web-link"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Root != c.TreePath(sum(arc)) || p.Path != filepath.Join(p.Root, "bin/web-link") {
		t.Fatalf("program %+v", p)
	}
	st, err := os.Stat(filepath.Join(p.Root, "bin/web"))
	if err != nil || st.Mode().Perm() != 0o755 || st.Mode()&os.ModeSetuid != 0 {
		t.Errorf("bin/web: %v %v (want 0755, no setuid)", st.Mode(), err)
	}
	if b, _ := os.ReadFile(filepath.Join(p.Root, "share/hard")); string(b) != "data" {
		t.Errorf("hard link: %q", b)
	}
	_, err = c.Resolve(context.Background(), spec.Artifact{URL: "https://x/web.tar.gz", SHA256: sum(arc), Run: "share/data.txt"})
	if !errors.Is(err, ErrNoProgram) {
		t.Errorf("a non-executable run: %v", err)
	}
	noParts(t, c)
}

func TestUnsafeArchives(t *testing.T) {
	for name, entries := range map[string][]entry{
		"dotdot":               {{name: "../evil", typ: tar.TypeReg, body: "x"}},
		"deep dotdot":          {{name: "bin/../../evil", typ: tar.TypeReg, body: "x"}},
		"absolute":             {{name: "/etc/evil", typ: tar.TypeReg, body: "x"}},
		"symlink out":          {{name: "out", typ: tar.TypeSymlink, link: "../../etc"}},
		"absolute symlink":     {{name: "out", typ: tar.TypeSymlink, link: "/etc/passwd"}},
		"write through a link": {{name: "d", typ: tar.TypeSymlink, link: "."}, {name: "d/x", typ: tar.TypeReg, body: "x"}},
		"link chain out": {
			{name: "a/b", typ: tar.TypeDir}, {name: "a/b/up", typ: tar.TypeSymlink, link: ".."},
			{name: "a/b/l", typ: tar.TypeSymlink, link: "up/../.."},
		},
		"hard link out":  {{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}},
		"device":         {{name: "dev", typ: tar.TypeChar}},
		"fifo":           {{name: "fifo", typ: tar.TypeFifo}},
		"replace a file": {{name: "f", typ: tar.TypeReg, body: "x"}, {name: "f", typ: tar.TypeSymlink, link: "."}},
	} {
		t.Run(name, func(t *testing.T) {
			arc := tarGz(t, entries)
			parent := t.TempDir()
			dir := filepath.Join(parent, "tree")
			os.Mkdir(dir, 0o755)
			err := Untar(dir, bytes.NewReader(arc), 1<<20)
			if !errors.Is(err, ErrUnsafeArchive) {
				t.Fatalf("err %v, want unsafe archive", err)
			}
			if ents, _ := os.ReadDir(parent); len(ents) != 1 {
				t.Errorf("something was written beside the tree: %v", ents)
			}
			// Through the cache: nothing is kept under the hash.
			s := &served{data: map[string][]byte{"https://x/a.tgz": arc}}
			c := newCache(t, s, nil)
			_, err = c.Resolve(context.Background(), spec.Artifact{URL: "https://x/a.tgz", SHA256: sum(arc), Run: "bin/web"})
			if !errors.Is(err, ErrUnsafeArchive) {
				t.Errorf("resolve: %v", err)
			}
			if _, err := os.Stat(c.TreePath(sum(arc))); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a tree was kept: %v", err)
			}
			noParts(t, c)
		})
	}
}

func TestUntarSizeLimit(t *testing.T) {
	arc := tarGz(t, []entry{{name: "a", typ: tar.TypeReg, body: strings.Repeat("x", 600)}, {name: "b", typ: tar.TypeReg, body: strings.Repeat("x", 600)}})
	err := Untar(t.TempDir(), bytes.NewReader(arc), 1000)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err %v, want too large", err)
	}
}

func TestPrune(t *testing.T) {
	old, fresh := []byte("old program"), []byte("fresh program")
	s := &served{data: map[string][]byte{"https://x/old": old, "https://x/fresh": fresh}}
	now := time.Now()
	c := newCache(t, s, func(c *Config) { c.UnusedFor = time.Hour; c.Now = func() time.Time { return now } })
	for _, u := range []string{"https://x/old", "https://x/fresh"} {
		if _, err := c.Resolve(context.Background(), spec.Artifact{URL: u, SHA256: sum(s.data[u])}); err != nil {
			t.Fatal(err)
		}
	}
	// The old one was last used two hours ago.
	then := now.Add(-2 * time.Hour)
	os.Chtimes(c.BlobPath(sum(old)), then, then)
	removed, err := c.Prune(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != sum(old) {
		t.Fatalf("removed %v, want only the old one", removed)
	}
	if _, err := os.Stat(c.BlobPath(sum(fresh))); err != nil {
		t.Errorf("the fresh one is gone: %v", err)
	}
	// A leftover download is removed when a cache opens the directory.
	part := filepath.Join(c.blobs(), ".part-"+sum(old)+"-123")
	os.WriteFile(part, []byte("half"), 0o600)
	if _, err := New(Config{Dir: c.Dir()}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(part); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover kept: %v", err)
	}
}

func TestHTTPFetcher(t *testing.T) {
	prog := []byte("over https")
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/web":
			w.Write(prog)
		case "/busy":
			http.Error(w, "busy", http.StatusServiceUnavailable)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c, err := New(Config{Dir: t.TempDir(), Logger: quiet, Fetchers: map[string]Fetcher{"https": HTTPFetcher(srv.Client())}, BackoffMin: time.Millisecond, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resolve(context.Background(), spec.Artifact{URL: srv.URL + "/web", SHA256: sum(prog)}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Resolve(context.Background(), spec.Artifact{URL: srv.URL + "/missing", SHA256: sum([]byte("m"))})
	if err == nil || !IsPermanent(err) || !strings.Contains(err.Error(), "404") {
		t.Errorf("404: %v (want permanent)", err)
	}
	_, err = c.Resolve(context.Background(), spec.Artifact{URL: srv.URL + "/busy", SHA256: sum([]byte("b"))})
	if err == nil || IsPermanent(err) || !strings.Contains(err.Error(), "503") {
		t.Errorf("503: %v (want transient)", err)
	}
}

func TestTreeOf(t *testing.T) {
	h := sum([]byte("x"))
	for p, want := range map[string]string{
		"/var/lib/corridor/agent/artifacts/trees/" + h + "/bin/web": "/var/lib/corridor/agent/artifacts/trees/" + h,
		"/var/lib/corridor/agent/artifacts/blobs/" + h:              "",
		"/usr/bin/web": "",
	} {
		got, ok := TreeOf(p)
		if got != want || ok != (want != "") {
			t.Errorf("TreeOf(%s) = %q, %v; want %q", p, got, ok, want)
		}
	}
}
