package store

import (
	"context"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// same fails unless the mirror's read equals what etcd says: the same
// snapshot (records and their revisions) and the same desired states.
func same(t *testing.T, s *Store, m *Mirror) {
	t.Helper()
	msn, mhosts, err := m.Read(bg, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sn, err := s.Snapshot(bg)
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := s.Hosts(bg)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(msn.Apps, sn.Apps) || !reflect.DeepEqual(msn.Servers, sn.Servers) || !reflect.DeepEqual(msn.Placement, sn.Placement) {
		t.Fatalf("mirror snapshot at %d:\n%+v\netcd at %d:\n%+v", msn.Revision, msn, sn.Revision, sn)
	}
	want := map[string]*HostKeys{}
	for name, h := range hosts {
		if h.Desired != nil {
			want[name] = &HostKeys{Desired: h.Desired, DesiredRevision: h.DesiredRevision}
		}
	}
	if !reflect.DeepEqual(mhosts, want) {
		t.Fatalf("mirror desired states %v, etcd %v", mhosts, want)
	}
}

// The mirror holds what etcd holds after each kind of write, and a read
// right after a write through the same Store already sees it.
func TestMirrorFollowsWrites(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	m := NewMirror(s)
	go m.Run(ctx)
	same(t, s, m)

	sn, _ := s.Snapshot(bg)
	if _, err := s.CommitApps(bg, sn, []AppRecord{app("a", 1), app("b", 2)}, nil, api.Event{Who: "t", Action: "app.apply"}); err != nil {
		t.Fatal(err)
	}
	same(t, s, m)
	for _, n := range []string{"s1", "s2"} {
		if err := s.PutServer(bg, ServerRecord{Server: spec.Server{Name: n, Address: "198.18.0.1"}}, 0, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.WriteDesired(bg, nil, []DesiredWrite{{Host: "s1", Data: []byte(`{"host":"s1"}`)}, {Host: "s2", Data: []byte(`{"host":"s2"}`)}}); err != nil {
		t.Fatal(err)
	}
	if err := s.WritePlacement(bg, nil, []AppPlacement{{App: "a", Tasks: []compile.Task{{ID: "a/c/0", Server: "s1"}}}}, nil); err != nil {
		t.Fatal(err)
	}
	// A status is no input of the controller's: not mirrored, no harm.
	if err := s.PutStatus(bg, StatusRecord{Status: api.Status{Name: "s1", AppliedRevision: 1}}); err != nil {
		t.Fatal(err)
	}
	same(t, s, m)

	// Deletes: an app, a placement, a removed server's desired state.
	sn, _ = s.Snapshot(bg)
	if _, err := s.CommitApps(bg, sn, nil, []string{"a"}, api.Event{Who: "t", Action: "app.delete"}); err != nil {
		t.Fatal(err)
	}
	if err := s.WritePlacement(bg, nil, nil, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateServer(bg, "s2", func(r *ServerRecord) (bool, error) { r.Revoked = true; return true, nil }, nil); err != nil {
		t.Fatal(err)
	}
	same(t, s, m)
	msn, hosts, _ := m.Read(bg, time.Second)
	if len(msn.Apps) != 1 || len(msn.Placement) != 0 || hosts["s2"] != nil || hosts["s1"] == nil {
		t.Fatalf("after deletes: apps %d placement %d desired %v", len(msn.Apps), len(msn.Placement), hosts)
	}
}

// A read never returns state older than the Store's own last write: with
// the mirror stopped, a read after a write waits, then says the mirror
// is behind, instead of answering without the write.
func TestMirrorReadWaitsForOwnWrites(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	ctx, cancel := context.WithCancel(bg)
	m := NewMirror(s)
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	if _, _, err := m.Read(bg, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	sn, _ := s.Snapshot(bg)
	if _, err := s.CommitApps(bg, sn, []AppRecord{app("late", 1)}, nil, api.Event{Who: "t", Action: "app.apply"}); err != nil {
		t.Fatal(err)
	}
	if msn, _, err := m.Read(bg, 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "behind") {
		t.Fatalf("read of a stopped mirror after a write: %v, %d apps", err, len(msn.Apps))
	}
}

// Changes made by another server (another Store on the same etcd) are
// signalled once the mirror holds them, so that the controller's trigger
// never runs ahead of its input.
func TestMirrorSignalsOthersChanges(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	other, err := Open(bg, Config{Endpoints: []string{s.etcd.Clients[0].Addr().String()}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	m := NewMirror(s)
	go m.Run(ctx)
	<-m.Changes() // the first load
	sn, _ := other.Snapshot(bg)
	if _, err := other.CommitApps(bg, sn, []AppRecord{app("elsewhere", 3)}, nil, api.Event{Who: "t", Action: "app.apply"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(30 * time.Second)
	for {
		select {
		case <-m.Changes():
		case <-deadline:
			t.Fatal("no change signalled for another server's apply")
		}
		// Read does not wait here: this Store wrote nothing.
		msn, _, err := m.Read(bg, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(msn.Apps) == 1 && msn.Apps[0].App.Name == "elsewhere" {
			return
		}
		t.Fatalf("signalled before the change was applied: %+v", msn.Apps)
	}
}

// FreshServer passes on the mirror's copy only while the mirror holds
// every server record written through this Store: a write of another kind
// (desired states, which stream in by the thousand during a change) does
// not send agent requests to etcd, a server record write (a revocation,
// a new join) does until the mirror holds it. The mirror here is loaded
// once and never watches, so it lags every later write.
func TestFreshServerWaitsForServerWritesOnly(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	if err := s.PutServer(bg, ServerRecord{Server: spec.Server{Name: "s1", Address: "198.18.0.1"}, CertSerial: "a"}, 0, nil); err != nil {
		t.Fatal(err)
	}
	m := NewMirror(s)
	if _, err := m.load(bg); err != nil {
		t.Fatal(err)
	}
	if r, ok := m.FreshServer("s1"); !ok || r.CertSerial != "a" {
		t.Fatalf("after load: FreshServer = %+v, %v; want the record, ok", r, ok)
	}
	if _, err := s.WriteDesired(bg, nil, []DesiredWrite{{Host: "s1", Data: []byte(`{"host":"s1"}`)}}); err != nil {
		t.Fatal(err)
	}
	if m.Revision() >= s.written.Load() {
		t.Fatalf("the mirror (at %d) should lag the desired write (at %d)", m.Revision(), s.written.Load())
	}
	if _, ok := m.FreshServer("s1"); !ok {
		t.Fatal("a desired-state write the mirror has not seen made FreshServer refuse: every agent request would read etcd during a fan-out")
	}
	rec, err := s.GetServer(bg, "s1")
	if err != nil {
		t.Fatal(err)
	}
	rec.Revoked = true
	if err := s.PutServer(bg, *rec, rec.Revision, nil); err != nil {
		t.Fatal(err)
	}
	if r, ok := m.FreshServer("s1"); ok {
		t.Fatalf("after a revocation the mirror has not seen: FreshServer = %+v, ok; want not ok (check etcd)", r)
	}
	if _, err := m.load(bg); err != nil {
		t.Fatal(err)
	}
	if r, ok := m.FreshServer("s1"); !ok || !r.Revoked {
		t.Fatalf("after reload: FreshServer = %+v, %v; want the revoked record, ok", r, ok)
	}
}
