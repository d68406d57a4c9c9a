package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// A status carried by the long-poll (POST .../desired) is stored as a
// separate report would be: Store.StatusOf sees it, the fan-out it
// acknowledges ends, and the server says it is stored before the
// long-poll answers (the agent learns its report is in without waiting
// for the next revision). Red without the route: an older server's 404
// comes back as ErrPollStatusUnsupported.
func TestLongPollCarriesStatus(t *testing.T) {
	t.Parallel()
	ts, a, rev := pendingHost(t, "c")
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	stored := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		// index = the current revision: the long-poll parks after storing.
		_, err := a.c.DesiredWithStatus(ctx, "s1", rev, time.Minute, api.Status{AppliedRevision: rev, Time: time.Now()}, func() { close(stored) })
		done <- err
	}()
	select {
	case <-stored:
	case err := <-done:
		t.Fatalf("long-poll with status ended before saying the status was stored: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no X-Corridor-Status: stored within 20s")
	}
	st, err := ts.st.StatusOf(bg, "s1")
	if err != nil || st == nil {
		t.Fatalf("StatusOf(s1) = %v, %v; want the carried status", st, err)
	}
	if st.Status.AppliedRevision != rev || st.Status.Name != "s1" {
		t.Errorf("stored status: revision %d, name %q; want %d, s1", st.Status.AppliedRevision, st.Status.Name, rev)
	}
	eventually(t, 20*time.Second, "fan-out ended by the carried status", func() (bool, string) {
		return ts.hub.pending() == 0, fmt.Sprint(ts.hub.pending(), " pending")
	})
	select {
	case err := <-done:
		t.Fatalf("the long-poll answered before any change: %v", err)
	default:
	}
	// A change wakes it, with the new state in the body.
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("d", 1, ""))); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("long-poll with status: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the long-poll did not answer the change within 20s")
	}
}

// The answer to a status carried by the long-poll: a status that names
// another server is refused (403, not stored, no wait); an answer that
// needs no wait is whole (revision, state, signature, X-Corridor-Index).
func TestLongPollStatusRefusedAndImmediate(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	a := ts.join(t, "s1", 0, nil)
	ts.join(t, "s2", 1, nil)
	_, err := a.c.DesiredWithStatus(bg, "s1", 0, time.Minute, api.Status{Name: "s2", AppliedRevision: 7}, nil)
	if code := api.HTTPStatus(err); code != http.StatusForbidden || errors.Is(err, api.ErrPollStatusUnsupported) {
		t.Fatalf("status naming s2 on s1's long-poll: %v (code %d), want 403", err, code)
	}
	if st, err := ts.st.StatusOf(bg, "s2"); err != nil || (st != nil && st.Status.AppliedRevision == 7) {
		t.Fatalf("a refused status was stored: %+v, %v", st, err)
	}
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("c", 2, ""))); err != nil {
		t.Fatal(err)
	}
	var want api.DesiredState
	eventually(t, 20*time.Second, "s1 has a desired state", func() (bool, string) {
		ds, err := ts.admin.HostDesired(bg, "s1")
		want = ds
		return err == nil && len(ds.State.Guests) == 1, fmt.Sprint(err)
	})
	// index 0 differs from the host's revision: answered at once.
	got, err := a.c.DesiredWithStatus(bg, "s1", 0, time.Minute, api.Status{AppliedRevision: 0}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Revision != want.Revision || got.Signature == nil || len(got.State.Guests) != 1 {
		t.Fatalf("answer: revision %d (want %d), signature %v, %d guests", got.Revision, want.Revision, got.Signature != nil, len(got.State.Guests))
	}
}
