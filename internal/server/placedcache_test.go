package server

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/store"
)

// placementJSON is app's stored placement record, re-encoded, and its
// revision ("" when there is none).
func placementJSON(t *testing.T, ts *testServer, app string) (string, int64) {
	t.Helper()
	sn, err := ts.st.Snapshot(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range sn.Placement {
		if p.App == app {
			b, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			return string(b), p.Revision
		}
	}
	return "", 0
}

// The controller compares a new placement with the stored record through
// its cache of encoded records (placedCache): a record changed by another
// writer (here: overwritten in etcd, as a deposed leader's late write
// would) has another revision, so the cache must not stand for it, and
// the next reconcile writes the placement back.
func TestPlacementRewrittenAfterForeignWrite(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ts.join(t, "s1", 0, nil)
	ts.join(t, "s2", 1, nil)
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("p", 2, ""))); err != nil {
		t.Fatal(err)
	}
	var want string
	eventually(t, 20*time.Second, "placement of p stored with both tasks", func() (bool, string) {
		want, _ = placementJSON(t, ts, "p")
		var p store.AppPlacement
		_ = json.Unmarshal([]byte(want), &p)
		return len(p.Tasks) == 2, want
	})
	// The first reconcile after placing rewrites the reasons (placed ->
	// kept); after that, a reconcile with nothing changed leaves the
	// record as it is (same revision), compared through the cache.
	ts.reconcileOnce(t)
	want, rev := placementJSON(t, ts, "p")
	ts.reconcileOnce(t)
	if got, r := placementJSON(t, ts, "p"); got != want || r != rev {
		t.Fatalf("an unchanged placement was written again (revision %d -> %d)", rev, r)
	}
	// Another writer replaces the record with one whose placement is the
	// same (the compile's input does not change) but whose reason is not.
	var p store.AppPlacement
	if err := json.Unmarshal([]byte(want), &p); err != nil {
		t.Fatal(err)
	}
	p.Tasks[0].Reason.Chosen = "forged"
	if err := ts.st.WritePlacement(bg, nil, []store.AppPlacement{p}, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := placementJSON(t, ts, "p"); got == want {
		t.Fatal("the foreign write did not change the record")
	}
	eventually(t, 20*time.Second, "the controller writes the placement back", func() (bool, string) {
		ts.ctrl.trigger()
		got, _ := placementJSON(t, ts, "p")
		return got == want, got
	})
}

// placedCache gives the remembered bytes only for the record at the
// remembered revision; any other revision is encoded afresh.
func TestPlacedCacheKeyedByRevision(t *testing.T) {
	var c placedCache
	rec := store.AppPlacement{App: "a", Revision: 7}
	c.remember("a", 7, []byte(`"cached"`))
	if got := c.encoded(rec); !bytes.Equal(got, []byte(`"cached"`)) {
		t.Fatalf("at the remembered revision: %s", got)
	}
	rec.Revision = 8
	want, _ := json.Marshal(rec)
	if got := c.encoded(rec); !bytes.Equal(got, want) {
		t.Fatalf("at another revision: %s, want %s", got, want)
	}
}
