package server

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/store"
)

// The controller encodes a host's desired state only when the compile
// made it anew: a reconcile that changes nothing encodes none (the cache
// hands out the same states, hoststate.State.Same). What it compares with is
// still the stored bytes: a state overwritten in etcd by another writer is
// written back although it was not encoded again.
func TestUnchangedHostStatesNotEncodedAgain(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ts.join(t, "s1", 0, nil)
	ts.join(t, "s2", 1, nil)
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("p", 2, ""))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "both hosts have a desired state with a guest", func() (bool, string) {
		b1, _ := ts.storedDesired(t, "s1")
		b2, _ := ts.storedDesired(t, "s2")
		return bytes.Contains(b1, []byte(`"task":"p/c/`)) && bytes.Contains(b2, []byte(`"task":"p/c/`)), string(b1) + "\n" + string(b2)
	})
	// A stored state is what json.Marshal writes for it, and runs a task
	// of p: not some other bytes remembered for it.
	stored := func(host string) {
		t.Helper()
		b, _ := ts.storedDesired(t, host)
		var st hoststate.State
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		if again, err := json.Marshal(st); err != nil || !bytes.Equal(again, b) || !bytes.Contains(b, []byte(`"task":"p/c/`)) {
			t.Fatalf("%s's stored state is not a state of p's tasks as json.Marshal writes it (%v):\n%s", host, err, b)
		}
	}
	// The first reconciles after placing may change states (placed ->
	// kept); then nothing changes.
	ts.reconcileOnce(t)
	ts.reconcileOnce(t)
	want, _ := ts.storedDesired(t, "s1")
	n := ts.ctrl.hostEncodes.Load()
	if n == 0 {
		t.Fatal("no host state was ever encoded")
	}
	ts.reconcileOnce(t)
	ts.reconcileOnce(t)
	if got := ts.ctrl.hostEncodes.Load(); got != n {
		t.Fatalf("reconciles that changed nothing encoded %d host states", got-n)
	}
	stored("s1")
	stored("s2")

	_, rev := ts.storedDesired(t, "s1")
	if _, err := ts.st.WriteDesired(bg, nil, []store.DesiredWrite{{Host: "s1", Data: []byte(`{"host":"s1"}`), Prev: rev}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the controller writes s1's state back", func() (bool, string) {
		ts.ctrl.trigger()
		got, _ := ts.storedDesired(t, "s1")
		return bytes.Equal(got, want), string(got)
	})
	if got := ts.ctrl.hostEncodes.Load(); got != n {
		t.Errorf("writing back an unchanged state encoded %d host states", got-n)
	}
	ts.reconcileOnce(t)
	stored("s1")
	stored("s2")

	// A new app: the hosts that run it get new states, encoded.
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("q", 1, ""))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "a host's state runs q", func() (bool, string) {
		b1, _ := ts.storedDesired(t, "s1")
		b2, _ := ts.storedDesired(t, "s2")
		return bytes.Contains(b1, []byte(`"task":"q/c/0"`)) || bytes.Contains(b2, []byte(`"task":"q/c/0"`)), string(b1) + "\n" + string(b2)
	})
	if got := ts.ctrl.hostEncodes.Load(); got == n {
		t.Error("a changed state was not encoded")
	}
}
