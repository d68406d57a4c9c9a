package store

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/corridor-dev/corridor/internal/compile"
)

// TestLargePlacementStored: the placement of an app of 10,000 tasks (about
// 12.5 MB with the placement reasons) is one record; it must reach the
// embedded etcd (the client's default limit, 2 MiB, refused it and the
// controller then never stored its placement). 5,000 tasks here: over 2
// MiB, and quick.
func TestLargePlacementStored(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	p := AppPlacement{App: "big", Network: netip.MustParsePrefix("100.64.0.0/16")}
	for i := range 5000 {
		tk := compile.Task{ID: fmt.Sprintf("big/c/%d", i), App: "big", Class: "c", Index: i, Server: fmt.Sprintf("h%04d", i)}
		for j := range 16 {
			tk.Reason.Rejected = append(tk.Reason.Rejected, compile.Rejection{Server: fmt.Sprintf("h%04d", j), Why: "as loaded; comes later by name"})
		}
		p.Tasks = append(p.Tasks, tk)
	}
	if err := s.WritePlacement(bg, nil, []AppPlacement{p}, nil); err != nil {
		t.Fatalf("write a placement of %d tasks: %v", len(p.Tasks), err)
	}
	sn, err := s.Snapshot(bg)
	if err != nil {
		t.Fatal(err)
	}
	if len(sn.Placement) != 1 || len(sn.Placement[0].Tasks) != len(p.Tasks) {
		t.Fatalf("read back %d placements", len(sn.Placement))
	}
}
