package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/artifact"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// ArtifactsDir is the artifact cache under the agent's state directory
// (its layout is internal/artifact's).
func ArtifactsDir(stateDir string) string { return filepath.Join(stateDir, "artifacts") }

// artifactGuests runs the guests whose spec names an artifact
// (spec.Guest.Artifact): it resolves the artifact through the cache
// (fetch, check, unpack) and hands the inner runtime the guest with its
// command set to the cached program and the artifact's arguments. A guest
// whose artifact cannot be had is not started, and its status says why
// (failed, with the reason) until it can.
type artifactGuests struct {
	Guests
	cache *artifact.Cache
	now   func() time.Time

	mu     sync.Mutex
	failed map[string]api.TaskStatus // by task
}

func newArtifactGuests(inner Guests, cache *artifact.Cache, now func() time.Time) *artifactGuests {
	return &artifactGuests{Guests: inner, cache: cache, now: now, failed: map[string]api.TaskStatus{}}
}

// Ensure implements Guests.
func (g *artifactGuests) Ensure(ctx context.Context, cg compile.Guest) error {
	a := cg.Spec.Artifact
	if a.IsZero() {
		g.clear(cg.Task)
		return g.Guests.Ensure(ctx, cg)
	}
	prog, err := g.cache.Resolve(ctx, a)
	if err != nil {
		reason := err.Error() // names the URL and what went wrong
		g.mu.Lock()
		prev, had := g.failed[cg.Task]
		since := g.now().UTC()
		if had && prev.Message == reason {
			since = prev.Since
		}
		g.failed[cg.Task] = api.TaskStatus{Task: cg.Task, State: api.TaskFailed, Runtime: cg.Spec.RuntimeName(), Message: reason, Since: since}
		g.mu.Unlock()
		return fmt.Errorf("not started: %s", reason)
	}
	g.clear(cg.Task)
	cg.Spec.Command = append([]string{prog.Path}, a.Args...)
	return g.Guests.Ensure(ctx, cg)
}

// Remove implements Guests.
func (g *artifactGuests) Remove(ctx context.Context, task string) error {
	g.clear(task)
	return g.Guests.Remove(ctx, task)
}

// Status implements Guests: a task whose artifact failed reports that,
// whatever an earlier program of it does.
func (g *artifactGuests) Status(task string) api.TaskStatus {
	g.mu.Lock()
	st, ok := g.failed[task]
	g.mu.Unlock()
	if ok {
		return st
	}
	return g.Guests.Status(task)
}

func (g *artifactGuests) clear(task string) {
	g.mu.Lock()
	delete(g.failed, task)
	g.mu.Unlock()
}

// artifactFetcher is the control plane client's artifact download
// (api.Client.FetchArtifact, with the agent's certificate).
type artifactFetcher interface {
	FetchArtifact(ctx context.Context, sum string) (io.ReadCloser, error)
}

// storeFetcher fetches corridor://SHA256 URLs from the control plane. A
// 4xx answer (not in the store, a refused certificate) waits the cache's
// longest backoff; a 5xx or a network error is retried sooner.
func storeFetcher(cp artifactFetcher) artifact.Fetcher {
	return func(ctx context.Context, rawURL string) (io.ReadCloser, error) {
		u, err := url.Parse(rawURL)
		if err != nil {
			return nil, artifact.Permanent(err)
		}
		rc, err := cp.FetchArtifact(ctx, u.Host)
		if code := api.HTTPStatus(err); code >= 400 && code < 500 && code != http.StatusTooManyRequests {
			return nil, artifact.Permanent(err)
		}
		return rc, err
	}
}

// useArtifactStore points the cache's corridor:// fetcher at cp.
func (a *Agent) useArtifactStore(cp ControlPlane) {
	if a.cfg.Artifacts == nil {
		return
	}
	if f, ok := cp.(artifactFetcher); ok {
		a.cfg.Artifacts.SetFetcher(spec.ArtifactScheme, storeFetcher(f))
	}
}
