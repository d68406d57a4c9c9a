package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/dataplane"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/testnet"
)

var (
	fencedLine = regexp.MustCompile(`msg="host fenced: paths stopped"`)
	liftedLine = regexp.MustCompile(`msg="fence lifted: `)
)

// TestPartitionFencesTheHost cuts one server's underlay link (a partition:
// its agent and guests go on running) on a fleet whose agents fence after
// 3 s without an acknowledged report. The cut-off host must stop its paths
// (no WireGuard peer, no tunnel route) and say why in its log and state
// directory; meanwhile the operator scales its task away. When the link
// comes back the host lifts the fence only on its new desired state: the
// task is removed there, and verify passes.
func TestPartitionFencesTheHost(t *testing.T) {
	f := upFleetOpts(t, func(o *lab.Options) {
		o.AgentArgs = append(o.AgentArgs, "--status-interval", "1s", "--fence-after", "3s")
	})
	shop := f.applyOwn(t, examples.Shop)
	tasks := f.settle(t, 5)
	f.verifyWithin(t, shop, 30*time.Second)
	var victim string
	for _, ti := range tasks {
		if ti.ID == shop+"/app/1" {
			victim = ti.Server
		}
	}
	if victim == "" {
		t.Fatalf("no %s/app/1: %v", shop, placement(tasks))
	}
	s := f.lab.Server(victim)
	sh := testnet.Netlink(t, s.Namespace)
	// Positive control: the host has paths before the partition.
	if n := wgPeers(t, s.WireGuardName); n == 0 {
		t.Fatalf("%s has no WireGuard peer before the partition", victim)
	}
	if n := tunnelRoutes(t, sh); n == 0 {
		t.Fatalf("%s has no tunnel route before the partition", victim)
	}
	fencedBefore := logCount(t, s.Log, fencedLine)

	setLink(t, s.Namespace, "eth0", false)
	cut := time.Now()
	fenceFile := filepath.Join(s.StateDir, agent.FenceFile)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := os.Stat(fenceFile)
		if err == nil && wgPeers(t, s.WireGuardName) == 0 && tunnelRoutes(t, sh) == 0 && logCount(t, s.Log, fencedLine) > fencedBefore {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not fenced within 30s of the partition: fence record %v, %d peers, %d tunnel routes", victim, err, wgPeers(t, s.WireGuardName), tunnelRoutes(t, sh))
		}
		time.Sleep(100 * time.Millisecond)
	}
	fenced := time.Since(cut)
	why, _ := os.ReadFile(fenceFile)
	t.Logf("%s fenced %s after the partition: %s", victim, fenced.Round(time.Millisecond), why)
	// The guests keep running, cut off.
	if _, err := os.Stat(f.lab.GuestNetnsOn(victim, shop+"/app/1")); err != nil {
		t.Errorf("the fence removed the guest of %s/app/1: %v", shop, err)
	}

	// The control plane, which has not marked the host down (30 s), takes
	// a change for it: app/1 is scaled away.
	if _, err := f.c.Scale(context.Background(), shop, "app", 1); err != nil {
		t.Fatal(err)
	}
	setLink(t, s.Namespace, "eth0", true)
	healed := time.Now()
	deadline = time.Now().Add(60 * time.Second)
	for logCount(t, s.Log, liftedLine) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not lift its fence within 60s of the link coming back", victim)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(fenceFile); !os.IsNotExist(err) {
		t.Errorf("fence record left after the fence was lifted: %v", err)
	}
	f.settle(t, 4)
	if _, err := os.Stat(f.lab.GuestNetnsOn(victim, shop+"/app/1")); !os.IsNotExist(err) {
		t.Errorf("the guest of %s/app/1 is still on %s after it came back: %v", shop, victim, err)
	}
	f.verifyWithin(t, shop, 30*time.Second)
	t.Logf("fence lifted and verify passed %s after the link came back", time.Since(healed).Round(time.Millisecond))
}

func setLink(t testing.TB, namespace, name string, up bool) {
	t.Helper()
	h := testnet.Netlink(t, namespace)
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if up {
		err = h.LinkSetUp(link)
	} else {
		err = h.LinkSetDown(link)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func wgPeers(t testing.TB, dev string) int {
	t.Helper()
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	d, err := wg.Device(dev)
	if err != nil {
		t.Fatalf("wg device %s: %v", dev, err)
	}
	return len(d.Peers)
}

// tunnelRoutes counts the unicast routes (to remote guests) of the
// encrypted and plain tables in the namespace of h; their unreachable
// defaults stay.
func tunnelRoutes(t testing.TB, h *netlink.Handle) int {
	t.Helper()
	n := 0
	for _, table := range []int{dataplane.TableEncrypt, dataplane.TablePlain} {
		rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatalf("routes of table %d: %v", table, err)
		}
		for _, r := range rs {
			if r.Type == unix.RTN_UNICAST {
				n++
			}
		}
	}
	return n
}
