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
	"github.com/corridor-dev/corridor/internal/guest/vm"
	"github.com/corridor-dev/corridor/internal/image"
	"github.com/corridor-dev/corridor/internal/spec"
)

// ArtifactsDir is the artifact cache under the agent's state directory
// (its layout is internal/artifact's).
func ArtifactsDir(stateDir string) string { return filepath.Join(stateDir, "artifacts") }

// artifactGuests runs the guests whose spec names an artifact
// (spec.Guest.Artifact): it resolves the artifact through the cache
// (fetch, check, unpack) and hands the inner runtime the guest with its
// command set to the cached program and the artifact's arguments or, for
// runtime vm, its boot files set to the cached image (vmBootFiles). A
// guest whose artifact cannot be had is not started, and its status says
// why (failed, with the reason) until it can.
type artifactGuests struct {
	Guests
	cache *artifact.Cache
	now   func() time.Time

	mu     sync.Mutex
	failed map[string]api.TaskStatus // by task
	given  map[string]string         // by task: the hash last handed to the inner runtime
}

func newArtifactGuests(inner Guests, cache *artifact.Cache, now func() time.Time) *artifactGuests {
	return &artifactGuests{Guests: inner, cache: cache, now: now, failed: map[string]api.TaskStatus{}, given: map[string]string{}}
}

// Ensure implements Guests.
func (g *artifactGuests) Ensure(ctx context.Context, cg compile.Guest) error {
	a := cg.Spec.Artifact
	if a.IsZero() {
		g.settle(cg.Task, "")
		return g.Guests.Ensure(ctx, cg)
	}
	var err error
	if cg.Spec.Runtime == spec.RuntimeVM {
		var e artifact.Entry
		if e, err = g.cache.Fetch(ctx, a); err == nil {
			cg.Spec, err = vmBootFiles(cg.Spec, e)
		}
	} else {
		var prog artifact.Program
		if prog, err = g.cache.Resolve(ctx, a); err == nil {
			cg.Spec.Command = append([]string{prog.Path}, a.Args...)
		}
	}
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
	g.settle(cg.Task, a.SHA256)
	return g.Guests.Ensure(ctx, cg)
}

// vmBootFiles is a VM guest's spec booting the image e: an archive is an
// image directory (image.json names its kernel and initramfs, booted as
// kernel and initrd), a single file a disk image (booted as image, by the
// host's default kernel). The artifact stays in the spec, so that the
// guest's record says where its boot files came from.
func vmBootFiles(s spec.Guest, e artifact.Entry) (spec.Guest, error) {
	if e.Tree != "" {
		im, err := image.LoadUnpacked(e.Tree)
		if err != nil {
			return s, fmt.Errorf("artifact %s: %w", s.Artifact.URL, err)
		}
		s.Kernel, s.Initrd, s.Image = im.KernelPath(), im.InitrdPath(), ""
		return s, nil
	}
	if err := vm.CheckDeliveredDisk(e.Blob); err != nil {
		return s, fmt.Errorf("artifact %s: %w", s.Artifact.URL, err)
	}
	s.Kernel, s.Initrd, s.Image = "", "", e.Blob
	return s, nil
}

// Remove implements Guests.
func (g *artifactGuests) Remove(ctx context.Context, task string) error {
	g.mu.Lock()
	delete(g.failed, task)
	delete(g.given, task)
	g.mu.Unlock()
	return g.Guests.Remove(ctx, task)
}

// settle records that task's guest was handed to the inner runtime, with
// the artifact of hash sum ("" for none).
func (g *artifactGuests) settle(task, sum string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.failed, task)
	if sum == "" {
		delete(g.given, task)
	} else {
		g.given[task] = sum
	}
}

// inUse adds to keep the hashes of the artifacts the inner runtime was
// given: a task whose new artifact cannot be had goes on running its
// earlier one, which a restart of its guest needs again.
func (g *artifactGuests) inUse(keep map[string]bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, sum := range g.given {
		keep[sum] = true
	}
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

// artifactsInUse is what artifact garbage collection keeps: the artifacts
// of every guest of the desired state (running or to be started) and
// those the runtimes were given.
func (a *Agent) artifactsInUse() map[string]bool {
	keep := map[string]bool{}
	a.mu.Lock()
	target := a.target
	a.mu.Unlock()
	if target != nil {
		for _, g := range target.State.Guests {
			if sum := g.Spec.Artifact.SHA256; sum != "" {
				keep[sum] = true
			}
		}
	}
	if ag, ok := a.cfg.Guests.(*artifactGuests); ok {
		ag.inUse(keep)
	}
	return keep
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
