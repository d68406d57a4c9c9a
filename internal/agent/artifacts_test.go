package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/artifact"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// recordingGuests is a Guests that records the guests it was asked to
// run.
type recordingGuests struct{ ensured []compile.Guest }

func (r *recordingGuests) Ensure(_ context.Context, g compile.Guest) error {
	r.ensured = append(r.ensured, g)
	return nil
}
func (r *recordingGuests) Remove(context.Context, string) error   { return nil }
func (r *recordingGuests) List(context.Context) ([]string, error) { return nil, nil }
func (r *recordingGuests) Status(task string) api.TaskStatus {
	return api.TaskStatus{Task: task, State: api.TaskRunning}
}

type fakeStore map[string][]byte

func (f fakeStore) FetchArtifact(_ context.Context, sum string) (io.ReadCloser, error) {
	b, ok := f[sum]
	if !ok {
		return nil, &api.StatusError{Code: 404, Message: "artifact " + sum + " is not in this server's store"}
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func TestArtifactGuests(t *testing.T) {
	prog := []byte("#!/bin/sh\n")
	h := sha256.Sum256(prog)
	sum := hex.EncodeToString(h[:])
	cache, err := artifact.New(artifact.Config{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), BackoffMin: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	store := fakeStore{sum: prog}
	cache.SetFetcher(spec.ArtifactScheme, storeFetcher(store))
	inner := &recordingGuests{}
	g := newArtifactGuests(inner, cache, time.Now)
	ctx := context.Background()

	good := compile.Guest{Task: "shop-web-0", Spec: spec.Guest{Runtime: "netns", Artifact: spec.Artifact{URL: "corridor://" + sum, SHA256: sum, Args: []string{"sample", "web"}}}}
	if err := g.Ensure(ctx, good); err != nil {
		t.Fatal(err)
	}
	want := []string{cache.BlobPath(sum), "sample", "web"}
	if len(inner.ensured) != 1 || !slices.Equal(inner.ensured[0].Spec.Command, want) {
		t.Fatalf("inner got %+v, want command %v", inner.ensured, want)
	}

	// A hash the store does not hold, and a wrong hash: not started,
	// failed with the reason.
	other := strings.Repeat("ab", 32)
	for _, bad := range []spec.Artifact{
		{URL: "corridor://" + other, SHA256: other},
	} {
		task := compile.Guest{Task: "shop-web-1", Spec: spec.Guest{Runtime: "netns", Artifact: bad}}
		err := g.Ensure(ctx, task)
		if err == nil {
			t.Fatal("a missing artifact started")
		}
		st := g.Status("shop-web-1")
		if st.State != api.TaskFailed || !strings.Contains(st.Message, "not in this server's store") {
			t.Errorf("status %+v", st)
		}
	}
	store[other] = []byte("not the content of that hash")
	cache2, _ := artifact.New(artifact.Config{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	cache2.SetFetcher(spec.ArtifactScheme, storeFetcher(store))
	g2 := newArtifactGuests(inner, cache2, time.Now)
	if err := g2.Ensure(ctx, compile.Guest{Task: "t", Spec: spec.Guest{Runtime: "netns", Artifact: spec.Artifact{URL: "corridor://" + other, SHA256: other}}}); err == nil {
		t.Fatal("a wrong hash started")
	}
	if st := g2.Status("t"); st.State != api.TaskFailed || !strings.Contains(st.Message, "sha256 mismatch") {
		t.Errorf("status %+v", st)
	}
	if len(inner.ensured) != 1 {
		t.Errorf("the inner runtime was asked to run %d guests, want 1", len(inner.ensured))
	}
	// Removed: the failure is forgotten.
	g2.Remove(ctx, "t")
	if st := g2.Status("t"); st.State != api.TaskRunning {
		t.Errorf("after remove: %+v", st)
	}
}
