package server

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// Desired states are served signed with the cluster CA's key, which the
// agent has from its join; a host whose agent reports applying, at the
// desired revision, a state of another digest is flagged in `get servers`,
// by an event and by a metric, and cleared when it matches again.
func TestSignedDesiredAndTamperedHost(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	a := ts.join(t, "s1", 0, nil)
	if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("pinned", 1, ""))); err != nil {
		t.Fatal(err)
	}
	ts.settle(t)
	ds, err := a.c.Desired(bg, "s1", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.State.Guests) != 1 || !ds.State.Guests[0].Network.IsValid() {
		t.Fatalf("desired state %+v: want one guest with its app network", ds.State)
	}
	key, err := hoststate.PublicKeyFromCA(ts.CACert())
	if err != nil {
		t.Fatal(err)
	}
	digest, err := ds.Verify(key)
	if err != nil {
		t.Fatalf("served state does not verify with the CA's key: %v", err)
	}
	// The admin's view carries the same digest.
	view, err := ts.admin.HostDesired(bg, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if view.Signature == nil || view.Signature.Digest != digest {
		t.Fatalf("admin view signature %+v, want digest %s", view.Signature, digest)
	}

	report := func(d string) {
		t.Helper()
		if err := a.c.ReportStatus(bg, "s1", api.Status{Name: "s1", AppliedRevision: ds.Revision, AppliedDigest: d, Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	server := func() api.Server {
		t.Helper()
		ss, err := ts.admin.ListServers(bg)
		if err != nil || len(ss) != 1 {
			t.Fatalf("servers %v, %v", ss, err)
		}
		return ss[0]
	}
	metric := func() string {
		rec := httptest.NewRecorder()
		ts.Server.routes().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		for _, l := range strings.Split(rec.Body.String(), "\n") {
			if strings.HasPrefix(l, `corridor_host_tampered{server="s1"}`) {
				return strings.TrimSpace(strings.TrimPrefix(l, `corridor_host_tampered{server="s1"}`))
			}
		}
		return ""
	}
	events := func(action string) int {
		t.Helper()
		evs, err := ts.admin.ListEvents(bg, 100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range evs {
			if e.Action == action && e.Object == "server/s1" {
				n++
			}
		}
		return n
	}

	report(digest)
	if s := server(); s.Tampered != "" || s.DesiredDigest != digest || s.AppliedDigest != digest {
		t.Fatalf("a host that applied the signed state is shown %+v", s)
	}

	evil := hoststate.Digest([]byte(`{"host":"s1","peers":[{"server":"evil"}]}`))
	report(evil)
	report(evil) // one event per change, not per heartbeat
	s := server()
	if !strings.Contains(s.Tampered, evil) || !strings.Contains(strings.Join(s.Errors, "\n"), "did not give it") {
		t.Fatalf("tampered host shown as %+v", s)
	}
	if n := events("host.tampered"); n != 1 {
		t.Errorf("%d host.tampered events, want 1", n)
	}
	if m := metric(); m != "1" {
		t.Errorf("corridor_host_tampered{server=s1} = %q, want 1", m)
	}

	report(digest)
	if s := server(); s.Tampered != "" {
		t.Fatalf("still flagged after the signed state was applied again: %s", s.Tampered)
	}
	if n := events("host.untampered"); n != 1 {
		t.Errorf("%d host.untampered events, want 1", n)
	}
	if m := metric(); m != "0" {
		t.Errorf("corridor_host_tampered{server=s1} = %q, want 0", m)
	}

	// An agent of before signing reports no digest: never flagged.
	report("")
	if s := server(); s.Tampered != "" {
		t.Fatalf("an agent without digest flagged: %s", s.Tampered)
	}
}

// The long-poll's answer reuses the signature's encoding per host and
// revision (signedState.tail): after a change the host gets the new state
// with a signature over that state, never the last revision's signature,
// and the admin's view agrees with what the agent was served.
func TestServedSignatureFollowsChanges(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	a := ts.join(t, "s1", 0, nil)
	key, err := hoststate.PublicKeyFromCA(ts.CACert())
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	var rev int64
	for i, n := range []int{1, 2, 1} {
		if _, err := ts.admin.ApplyApp(bg, []byte(oneClassApp("sig", n, ""))); err != nil {
			t.Fatal(err)
		}
		ts.settle(t)
		// Twice per revision: the second answer comes from the cache.
		for range 2 {
			ds, err := a.c.Desired(bg, "s1", 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(ds.State.Guests) != n {
				t.Fatalf("change %d: %d guests served, want %d", i, len(ds.State.Guests), n)
			}
			d, err := ds.Verify(key)
			if err != nil {
				t.Fatalf("change %d (revision %d): served state does not verify: %v", i, ds.Revision, err)
			}
			if ds.Revision != rev {
				if len(digests) > 0 && d == digests[len(digests)-1] {
					t.Fatalf("change %d: the new revision %d carries the last one's digest", i, ds.Revision)
				}
				digests, rev = append(digests, d), ds.Revision
			}
			view, err := ts.admin.HostDesired(bg, "s1")
			if err != nil {
				t.Fatal(err)
			}
			if view.Signature == nil || view.Signature.Digest != d {
				t.Fatalf("change %d: admin view signature %+v, served digest %s", i, view.Signature, d)
			}
		}
	}
	if len(digests) != 3 {
		t.Fatalf("digests %v: want one per change", digests)
	}
}
