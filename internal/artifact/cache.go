// Package artifact is the agent's content-addressed cache of task
// programs delivered as artifacts (spec.Artifact): it fetches a program
// from an HTTPS URL or the control plane's store, checks it against its
// SHA-256 while writing it, unpacks archives, and removes entries no task
// has used for a while.
//
// Layout under the cache directory (one owner: this package):
//
//	blobs/SHA256          the verified file, read-only (0555)
//	blobs/.part-SHA256-*  a download under way (never run; removed at start)
//	trees/SHA256/         an archive's unpacked tree
//	trees/.part-SHA256-*  an unpacking under way
//
// A blob appears under its final name only by rename, after its hash
// matched and its content was synced: a half-written or wrong file is
// never found under a name that could be run. The blob's modification
// time is its last use (Resolve touches it), which garbage collection
// reads, so that it survives agent restarts.
package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/corridor-dev/corridor/internal/spec"
)

// Defaults of Config.
const (
	DefaultMaxSize     = 512 << 20 // bytes of one download
	DefaultMaxUnpacked = 2 << 30   // bytes of one unpacked archive
	DefaultUnusedFor   = time.Hour
	// DefaultAttempts is how many times one Resolve tries a transient
	// failure before it gives up until the backoff has passed.
	DefaultAttempts = 3
)

// Errors a fetch fails with. ErrHashMismatch, ErrTooLarge and
// ErrUnsafeArchive are permanent: trying again soon gets the same bytes.
var (
	ErrHashMismatch  = errors.New("artifact: sha256 mismatch")
	ErrTooLarge      = errors.New("artifact: larger than the agent's limit")
	ErrUnsafeArchive = errors.New("artifact: unsafe archive")
	ErrNoProgram     = errors.New("artifact: program not found")
	ErrNoSource      = errors.New("artifact: no way to fetch this url")
)

// permanentError marks a failure that retrying soon would repeat.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that retrying soon would repeat (a 404, a
// refused certificate): the cache waits its longest backoff before the
// next try.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err is not worth retrying soon.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p) || errors.Is(err, ErrHashMismatch) || errors.Is(err, ErrTooLarge) ||
		errors.Is(err, ErrUnsafeArchive) || errors.Is(err, ErrNoProgram) || errors.Is(err, ErrNoSource)
}

// Fetcher opens the artifact at rawURL for reading. It returns an error
// marked Permanent when trying again soon cannot help.
type Fetcher func(ctx context.Context, rawURL string) (io.ReadCloser, error)

// Config configures a Cache.
type Config struct {
	Dir string
	// MaxSize bounds one download (DefaultMaxSize when 0); MaxUnpacked
	// the files of one unpacked archive (DefaultMaxUnpacked when 0).
	MaxSize     int64
	MaxUnpacked int64
	// UnusedFor: Prune removes entries not used for longer.
	UnusedFor time.Duration
	// Fetchers by URL scheme ("https", spec.ArtifactScheme). SetFetcher
	// adds one later (the agent's store client exists only once it has
	// joined).
	Fetchers map[string]Fetcher
	// BackoffMin and BackoffMax bound the wait after a failure before the
	// next try (defaults 1 s and 2 min; a permanent failure waits Max).
	BackoffMin, BackoffMax time.Duration
	Attempts               int
	Logger                 *slog.Logger
	Now                    func() time.Time
}

// Cache is the content-addressed cache. Its methods are safe for
// concurrent use; concurrent Resolves of one hash share one fetch.
type Cache struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	fetchers map[string]Fetcher
	inflight map[string]*call
	failed   map[string]*failure // by hash
	using    map[string]int      // hashes being resolved: Prune leaves them
}

type call struct {
	done chan struct{}
	err  error
}

type failure struct {
	err   error
	count int
	next  time.Time
}

// New makes the cache directory and removes what an interrupted run left
// half done.
func New(cfg Config) (*Cache, error) {
	if cfg.Dir == "" {
		return nil, errors.New("artifact: cache directory is empty")
	}
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	if cfg.MaxUnpacked <= 0 {
		cfg.MaxUnpacked = DefaultMaxUnpacked
	}
	if cfg.UnusedFor <= 0 {
		cfg.UnusedFor = DefaultUnusedFor
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 2 * time.Minute
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = DefaultAttempts
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Cache{cfg: cfg, log: cfg.Logger, fetchers: map[string]Fetcher{},
		inflight: map[string]*call{}, failed: map[string]*failure{}, using: map[string]int{}}
	for k, f := range cfg.Fetchers {
		c.fetchers[k] = f
	}
	// The cache is read by the tasks' unprivileged users (through a bind
	// mount of the blob or tree): directories are 0755.
	for _, d := range []string{c.blobs(), c.trees()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("artifact: %w", err)
		}
		if err := removeParts(d); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Dir is the cache directory.
func (c *Cache) Dir() string { return c.cfg.Dir }

func (c *Cache) blobs() string { return filepath.Join(c.cfg.Dir, "blobs") }
func (c *Cache) trees() string { return filepath.Join(c.cfg.Dir, "trees") }

// BlobPath is where the verified file of hash sum lives.
func (c *Cache) BlobPath(sum string) string { return filepath.Join(c.blobs(), sum) }

// TreePath is where the unpacked archive of hash sum lives.
func (c *Cache) TreePath(sum string) string { return filepath.Join(c.trees(), sum) }

// removeParts removes leftovers of interrupted downloads and unpackings.
func removeParts(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".part-") {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("artifact: remove leftover: %w", err)
			}
		}
	}
	return nil
}

// SetFetcher makes f fetch URLs of scheme.
func (c *Cache) SetFetcher(scheme string, f Fetcher) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fetchers[scheme] = f
}

// Program is a resolved artifact: the file to run and, for an archive,
// the tree it lies in (which the guest must see whole).
type Program struct {
	Path string
	Root string // "" for a single file
}

// Resolve returns the program of a, fetching, verifying and unpacking it
// when the cache does not hold it yet. After a failure it does not try
// again before a backoff has passed: it returns the last error, saying
// when the next try is.
func (c *Cache) Resolve(ctx context.Context, a spec.Artifact) (Program, error) {
	e, err := c.Fetch(ctx, a)
	if err != nil {
		return Program{}, err
	}
	if e.Tree == "" {
		return Program{Path: e.Blob}, nil
	}
	p, err := programIn(e.Tree, a.Run)
	if err != nil {
		return Program{}, err
	}
	return Program{Path: p, Root: e.Tree}, nil
}

// Entry is a verified artifact in the cache: its file and, for an
// archive, the directory it was unpacked into.
type Entry struct {
	Blob string
	Tree string // "" unless the artifact is an archive
}

// Fetch returns the cache entry of a, fetching, verifying and unpacking
// it as Resolve does, without looking for a program in it (a VM's boot
// image is used whole). It fails as Resolve does.
func (c *Cache) Fetch(ctx context.Context, a spec.Artifact) (Entry, error) {
	sum := a.SHA256
	if !spec.ValidSHA256(sum) {
		return Entry{}, Permanent(fmt.Errorf("artifact: sha256 %q is not 64 lower-case hex digits", sum))
	}
	c.mu.Lock()
	c.using[sum]++
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.using[sum]--; c.using[sum] == 0 {
			delete(c.using, sum)
		}
		c.mu.Unlock()
	}()
	if err := c.ensure(ctx, a); err != nil {
		return Entry{}, err
	}
	c.touch(sum)
	e := Entry{Blob: c.BlobPath(sum)}
	if a.IsArchive() {
		e.Tree = c.TreePath(sum)
	}
	return e, nil
}

// ensure makes the blob (and the tree of an archive) exist, sharing the
// work with concurrent callers for the same hash.
func (c *Cache) ensure(ctx context.Context, a spec.Artifact) error {
	sum := a.SHA256
	if c.present(a) {
		return nil
	}
	c.mu.Lock()
	if f := c.failed[sum]; f != nil && c.cfg.Now().Before(f.next) {
		err, next := f.err, f.next
		c.mu.Unlock()
		return fmt.Errorf("%w (next try in %s)", err, next.Sub(c.cfg.Now()).Round(time.Second))
	}
	if cl := c.inflight[sum]; cl != nil {
		c.mu.Unlock()
		select {
		case <-cl.done:
			if cl.err != nil {
				return cl.err
			}
			return c.ensure(ctx, a) // the other call may have been for the file only
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	cl := &call{done: make(chan struct{})}
	c.inflight[sum] = cl
	c.mu.Unlock()

	cl.err = c.fetchAndUnpack(ctx, a)

	c.mu.Lock()
	delete(c.inflight, sum)
	if cl.err == nil {
		delete(c.failed, sum)
	} else if ctx.Err() == nil {
		f := c.failed[sum]
		if f == nil {
			f = &failure{}
			c.failed[sum] = f
		}
		f.count++
		f.err = cl.err
		wait := c.cfg.BackoffMax
		if !IsPermanent(cl.err) {
			wait = c.cfg.BackoffMin << min(f.count-1, 20)
			wait = min(wait, c.cfg.BackoffMax)
		}
		f.next = c.cfg.Now().Add(wait)
	}
	c.mu.Unlock()
	close(cl.done)
	return cl.err
}

// present reports whether the blob (and tree) of a are in place.
func (c *Cache) present(a spec.Artifact) bool {
	if _, err := os.Stat(c.BlobPath(a.SHA256)); err != nil {
		return false
	}
	if a.IsArchive() {
		if _, err := os.Stat(c.TreePath(a.SHA256)); err != nil {
			return false
		}
	}
	return true
}

func (c *Cache) fetchAndUnpack(ctx context.Context, a spec.Artifact) error {
	sum := a.SHA256
	if _, err := os.Stat(c.BlobPath(sum)); err != nil {
		var err error
		for attempt := 1; ; attempt++ {
			err = c.download(ctx, a)
			if err == nil || IsPermanent(err) || attempt >= c.cfg.Attempts || ctx.Err() != nil {
				break
			}
			wait := c.cfg.BackoffMin << (attempt - 1)
			c.log.Warn("artifact fetch failed; trying again", "sha256", sum, "url", a.URL, "attempt", attempt, "retryIn", wait, "err", err)
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		if err != nil {
			return err
		}
		c.log.Info("artifact fetched", "sha256", sum, "url", a.URL)
	}
	if a.IsArchive() {
		if _, err := os.Stat(c.TreePath(sum)); err != nil {
			if err := c.unpack(sum); err != nil {
				return err
			}
		}
	}
	return nil
}

// download fetches a into a temporary file in the blobs directory,
// hashing while writing, bounded by MaxSize, and renames it to its final
// name only once synced and matching.
func (c *Cache) download(ctx context.Context, a spec.Artifact) error {
	u, err := url.Parse(a.URL)
	if err != nil {
		return Permanent(fmt.Errorf("artifact: url: %w", err))
	}
	c.mu.Lock()
	fetch := c.fetchers[u.Scheme]
	c.mu.Unlock()
	if fetch == nil {
		return fmt.Errorf("%w: %s (the agent has no %s:// fetcher yet)", ErrNoSource, a.URL, u.Scheme)
	}
	body, err := fetch(ctx, a.URL)
	if err != nil {
		return fmt.Errorf("artifact: fetch %s: %w", a.URL, err)
	}
	defer body.Close()
	if err := WriteVerified(c.blobs(), a.SHA256, body, c.cfg.MaxSize, 0o555); err != nil {
		return fmt.Errorf("%w (from %s)", err, a.URL)
	}
	return nil
}

// WriteVerified copies r to dir/sum through a temporary file in dir,
// hashing while writing: it fails with ErrTooLarge past max bytes and with
// ErrHashMismatch when the content's SHA-256 is not sum, and in both cases
// leaves nothing behind. The file appears under its name only complete,
// synced and matching. It is shared by the agent's cache and the server's
// store.
func WriteVerified(dir, sum string, r io.Reader, max int64, mode os.FileMode) (err error) {
	tmp, err := os.CreateTemp(dir, ".part-"+sum+"-*")
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, max+1))
	if err != nil {
		return fmt.Errorf("artifact: download: %w", err)
	}
	if n > max {
		return fmt.Errorf("%w: more than %d bytes", ErrTooLarge, max)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("%w: want %s, got %s (%d bytes)", ErrHashMismatch, sum, got, n)
	}
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("artifact: sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, sum)); err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("artifact: sync %s: %w", dir, err)
	}
	return nil
}

// touchEvery: a blob's time of last use is written at most this often.
const touchEvery = time.Minute

func (c *Cache) touch(sum string) {
	p := c.BlobPath(sum)
	now := c.cfg.Now()
	if st, err := os.Stat(p); err == nil && now.Sub(st.ModTime()) < touchEvery {
		return
	}
	if err := os.Chtimes(p, now, now); err != nil {
		c.log.Warn("artifact: cannot record use", "sha256", sum, "err", err)
	}
}

// Prune removes the entries not used for UnusedFor (by their blob's
// modification time), except those being resolved or named in keep, and
// returns the hashes removed.
func (c *Cache) Prune(keep map[string]bool) ([]string, error) {
	ents, err := os.ReadDir(c.blobs())
	if err != nil {
		return nil, fmt.Errorf("artifact: %w", err)
	}
	cutoff := c.cfg.Now().Add(-c.cfg.UnusedFor)
	var removed []string
	var errs []error
	for _, e := range ents {
		sum := e.Name()
		if !spec.ValidSHA256(sum) || keep[sum] {
			continue
		}
		info, err := e.Info()
		if err != nil || info.ModTime().After(cutoff) {
			continue
		}
		c.mu.Lock()
		busy := c.using[sum] > 0 || c.inflight[sum] != nil
		if !busy {
			// Removed under the lock: a Resolve starting now waits
			// for it and fetches again.
			if err := os.RemoveAll(c.TreePath(sum)); err != nil {
				errs = append(errs, err)
			} else if err := os.Remove(c.BlobPath(sum)); err != nil {
				errs = append(errs, err)
			} else {
				removed = append(removed, sum)
			}
		}
		c.mu.Unlock()
	}
	if len(removed) > 0 {
		c.log.Info("artifacts removed, unused", "count", len(removed), "unusedFor", c.cfg.UnusedFor)
	}
	return removed, errors.Join(errs...)
}

// Run prunes every interval until ctx ends (and once at once), keeping
// the hashes keep returns (those of the guests the host runs or must
// run: an artifact in use is never removed, however long ago it was
// fetched); keep may be nil.
func (c *Cache) Run(ctx context.Context, interval time.Duration, keep func() map[string]bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		var k map[string]bool
		if keep != nil {
			k = keep()
		}
		if _, err := c.Prune(k); err != nil {
			c.log.Warn("artifact garbage collection", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// TreeOf returns the unpacked tree that holds the program p, when p lies
// in one (…/trees/SHA256/…): a runtime shows the guest the whole tree,
// not the program alone, so that the program finds the files beside it.
func TreeOf(p string) (string, bool) {
	p = filepath.Clean(p)
	for d := filepath.Dir(p); d != "/" && d != "."; d = filepath.Dir(d) {
		if spec.ValidSHA256(filepath.Base(d)) && filepath.Base(filepath.Dir(d)) == "trees" {
			return d, true
		}
	}
	return "", false
}
