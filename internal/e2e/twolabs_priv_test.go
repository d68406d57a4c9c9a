package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/lab"
)

// TestTwoLabsRunOneApp runs the shop, under one app name, on two labs of
// one machine at once: the guests' network namespaces and cgroups carry
// each agent's scope (the server's namespace, which holds the lab's
// prefix), so the two labs' copies of shop/db/0 and the rest never meet.
// Both verify; each lab's guest of a task is its own namespace; deleting
// the app from one lab leaves the other's guests running and verified.
// Before scopes the second lab's agents took the first's guests (same
// namespace and cgroup names) and the first lab's verify failed.
func TestTwoLabsRunOneApp(t *testing.T) {
	a := upFleet(t)
	pid := os.Getpid()
	b := upFleetOpts(t, func(o *lab.Options) {
		o.Prefix = fmt.Sprintf("cortf%d-", pid%1000)
		o.Underlay = netip.MustParsePrefix(fmt.Sprintf("198.19.%d.0/24", pid%250))
	})
	a.apply(t, examples.Shop)
	b.apply(t, examples.Shop)
	ta := a.settle(t, 5)
	tb := b.settle(t, 5)

	distinct := 0
	for _, x := range ta {
		for _, y := range tb {
			if x.ID != y.ID {
				continue
			}
			na, nb := a.lab.GuestNetnsOn(x.Server, x.ID), b.lab.GuestNetnsOn(y.Server, y.ID)
			if na == nb {
				t.Errorf("%s: both labs' guests in %s", x.ID, na)
			}
			if _, err := os.Stat(na); err != nil {
				t.Errorf("%s: lab a's guest: %v", x.ID, err)
			}
			if _, err := os.Stat(nb); err != nil {
				t.Errorf("%s: lab b's guest: %v", y.ID, err)
			}
			distinct++
		}
	}
	if distinct != 5 {
		t.Fatalf("compared %d tasks of the two labs, want 5: %v / %v", distinct, placement(ta), placement(tb))
	}
	a.verifyWithin(t, "shop", 30*time.Second)
	b.verifyWithin(t, "shop", 30*time.Second)

	// The app goes from lab a: lab b's guests stay, unrestarted.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.c.DeleteApp(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	for _, x := range ta {
		ns := a.lab.GuestNetnsOn(x.Server, x.ID)
		deadline := time.Now().Add(time.Minute)
		for _, err := os.Stat(ns); !os.IsNotExist(err); _, err = os.Stat(ns) {
			if time.Now().After(deadline) {
				t.Fatalf("lab a's guest of %s (%s) still there a minute after the delete", x.ID, ns)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	after, err := b.c.ListTasks(ctx, api.Filter{App: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	for _, y := range after {
		if y.Status == nil || y.Status.State != api.TaskRunning || y.Status.Restarts != 0 {
			t.Errorf("lab b's %s after lab a removed its copy: %+v", y.ID, y.Status)
		}
		if _, err := os.Stat(b.lab.GuestNetnsOn(y.Server, y.ID)); err != nil {
			t.Errorf("lab b's guest of %s: %v", y.ID, err)
		}
	}
	b.verifyWithin(t, "shop", 30*time.Second)
}
