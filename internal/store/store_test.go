package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

var bg = context.Background()

func open(t *testing.T, dir string, maxEvents int) *Store {
	t.Helper()
	s, err := Open(bg, Config{DataDir: dir, MaxEvents: maxEvents, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

func TestOpenRequiresDirOrEndpoints(t *testing.T) {
	if _, err := Open(bg, Config{}); err == nil {
		t.Fatal("Open without data dir or endpoints succeeded")
	}
}

func TestReopenKeepsData(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open(t, dir, 0)
	v, err := s.EnsureSecret(bg, "x", func() ([]byte, error) { return []byte("first"), nil })
	if err != nil || string(v) != "first" {
		t.Fatalf("ensure = %q, %v", v, err)
	}
	s.Close()
	s = open(t, dir, 0)
	defer s.Close()
	v, err = s.EnsureSecret(bg, "x", func() ([]byte, error) { return []byte("second"), nil })
	if err != nil || string(v) != "first" {
		t.Fatalf("after reopen = %q, %v; want first", v, err)
	}
}

func TestEnsureSecretAgreesUnderRace(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			v, err := s.EnsureSecret(bg, "race", func() ([]byte, error) { return []byte(fmt.Sprint(i)), nil })
			if err != nil {
				t.Error(err)
			}
			got[i] = string(v)
		}(i)
	}
	wg.Wait()
	for _, g := range got {
		if g != got[0] {
			t.Fatalf("secrets differ: %q", got)
		}
	}
}

func app(name string, tasks int) AppRecord {
	return AppRecord{App: spec.App{APIVersion: spec.APIVersion, Kind: spec.KindApp, Name: name,
		Classes: []spec.Class{{Name: "c", Tasks: tasks}}}, UpdatedBy: "test"}
}

func TestCommitAppsDetectsChanges(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	sn, err := s.Snapshot(bg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CommitApps(bg, sn, []AppRecord{app("a", 1)}, nil, api.Event{Who: "t", Action: "app.apply"}); err != nil {
		t.Fatalf("first commit: %v", err)
	}
	// A second writer that read before the first commit must not land.
	if _, err := s.CommitApps(bg, sn, []AppRecord{app("b", 1)}, nil, api.Event{Who: "t", Action: "app.apply"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale commit = %v, want ErrConflict", err)
	}
	// Nor after a server changed.
	sn, _ = s.Snapshot(bg)
	if err := s.PutServer(bg, ServerRecord{Server: spec.Server{Name: "s1"}}, 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CommitApps(bg, sn, []AppRecord{app("b", 1)}, nil, api.Event{Who: "t", Action: "app.apply"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("commit after a server change = %v, want ErrConflict", err)
	}
	sn, _ = s.Snapshot(bg)
	if _, err := s.CommitApps(bg, sn, []AppRecord{app("b", 2)}, []string{"a"}, api.Event{Who: "t", Action: "app.apply"}); err != nil {
		t.Fatal(err)
	}
	sn, _ = s.Snapshot(bg)
	if len(sn.Apps) != 1 || sn.Apps[0].App.Name != "b" || sn.Apps[0].Revision == 0 {
		t.Fatalf("apps = %+v", sn.Apps)
	}
	if len(sn.Servers) != 1 || sn.Servers[0].Server.Name != "s1" {
		t.Fatalf("servers = %+v", sn.Servers)
	}
	if err := s.PutServer(bg, ServerRecord{Server: spec.Server{Name: "s1"}}, 0, nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("create of an existing server = %v, want ErrConflict", err)
	}
}

func TestEventsAreBounded(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir(), 5)
	defer s.Close()
	for i := 0; i < 12; i++ {
		if err := s.AppendEvent(bg, api.Event{Who: "t", Action: "n", Message: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := s.Events(bg, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 5 {
		t.Fatalf("%d events kept, want 5", len(evs))
	}
	for i, e := range evs {
		if e.Message != fmt.Sprint(7+i) {
			t.Fatalf("events = %+v, want messages 7..11 in order", evs)
		}
	}
	if evs, _ := s.Events(bg, 2); len(evs) != 2 || evs[1].Message != "11" {
		t.Fatalf("limited events = %+v", evs)
	}
}

func TestWriteDesiredBatchesAndGuards(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	var writes []DesiredWrite
	for i := 0; i < 130; i++ { // more than one transaction's worth
		writes = append(writes, DesiredWrite{Host: fmt.Sprintf("h%03d", i), Data: []byte(`{"host":"x"}`)})
	}
	n, err := s.WriteDesired(bg, nil, writes)
	if err != nil || n != 130 {
		t.Fatalf("write = %d, %v", n, err)
	}
	hosts, err := s.Hosts(bg)
	if err != nil || len(hosts) != 130 {
		t.Fatalf("hosts = %d, %v", len(hosts), err)
	}
	ds, err := s.GetDesired(bg, "h007")
	if err != nil || ds.Revision != hosts["h007"].DesiredRevision {
		t.Fatalf("get desired = %+v, %v", ds, err)
	}
	// A write based on a revision that moved on is refused.
	if _, err := s.WriteDesired(bg, nil, []DesiredWrite{{Host: "h007", Data: []byte(`{}`), Prev: ds.Revision - 1}}); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale write = %v, want ErrConflict", err)
	}
	if err := s.PutStatus(bg, StatusRecord{Status: api.Status{Name: "h007", AppliedRevision: 3}}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Statuses(bg)
	if err != nil || st["h007"].Status.AppliedRevision != 3 {
		t.Fatalf("statuses = %+v, %v", st, err)
	}
}
