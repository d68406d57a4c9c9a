package server

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/store"
)

// startEtcdCluster starts n etcd members in this process, each with its
// own directory and loopback ports, and returns their client URLs.
func startEtcdCluster(t *testing.T, n int) []string {
	t.Helper()
	ports, err := store.FreePorts(2 * n)
	if err != nil {
		t.Fatal(err)
	}
	var initial []string
	for i := 0; i < n; i++ {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	base := t.TempDir()
	var members []*embed.Etcd
	var clients []string
	for i := 0; i < n; i++ {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(base, cfg.Name)
		cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i])}
		pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "corridor-test-" + filepath.Base(base)
		cfg.ListenMetricsUrls = nil
		store.QuietLogger(cfg)
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			t.Fatalf("start etcd member %d: %v", i, err)
		}
		members = append(members, e)
		clients = append(clients, cu.String())
	}
	t.Cleanup(func() {
		for _, e := range members {
			e.Close()
		}
	})
	for i, e := range members {
		select {
		case <-e.Server.ReadyNotify():
		case <-time.After(30 * time.Second):
			t.Fatalf("etcd member %d not ready", i)
		}
	}
	return clients
}

// Two servers share a three-member etcd: both serve the API with the same
// tokens and CA, one runs the controller, and when it stops the other
// takes over and compiles the next change.
func TestExternalEtcdLeaderFailover(t *testing.T) {
	t.Parallel()
	endpoints := startEtcdCluster(t, 3)
	cfg := func(id string) Config {
		return Config{ID: id, LeaderTTL: 2, Etcd: store.Config{Endpoints: endpoints, Prefix: "/corridor-ha"}}
	}
	a := startServer(t, cfg("a"))
	b := startServer(t, cfg("b"))
	if a.AdminToken() != b.AdminToken() || a.JoinToken() != b.JoinToken() || string(a.CACert()) != string(b.CACert()) {
		t.Fatal("servers sharing an etcd must share tokens and CA")
	}
	eventually(t, 10*time.Second, "exactly one leader", func() (bool, string) {
		return a.IsLeader() != b.IsLeader(), fmt.Sprint(a.IsLeader(), b.IsLeader())
	})
	leader, follower := a, b
	if b.IsLeader() {
		leader, follower = b, a
	}

	// An agent joined through the follower is known to both.
	ag := follower.join(t, "s1", 0, nil)
	if _, err := follower.admin.ApplyApp(bg, []byte(oneClassApp("ha", 2, ""))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "2 tasks placed by the leader", func() (bool, string) {
		return len(tasksOf(t, leader.admin, api.Filter{})) == 2, ""
	})

	before := follower.Reconciles()
	leader.stop()
	eventually(t, 10*time.Second, "the follower leads", func() (bool, string) {
		return follower.IsLeader(), ""
	})
	if _, err := follower.admin.Scale(bg, "ha", "c", 3); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "3 tasks placed by the new leader", func() (bool, string) {
		return len(tasksOf(t, follower.admin, api.Filter{})) == 3, ""
	})
	// The placement is written before the reconcile is counted (an event
	// is appended in between): wait for the count, do not read it once.
	eventually(t, 10*time.Second, "the new leader counted its reconcile", func() (bool, string) {
		return follower.Reconciles() > before, fmt.Sprint(follower.Reconciles(), " <= ", before)
	})
	ds, err := ag.c.Desired(bg, "s1", 0, 0)
	if err != nil || len(ds.State.Guests) != 3 {
		t.Fatalf("agent's desired state via the new leader: %d guests, %v", len(ds.State.Guests), err)
	}
}
