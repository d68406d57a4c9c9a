package dataplane

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// An app of thousands of tasks gives firewall sets of thousands of
// addresses. Sent as one netlink message, such a set overflows its 16-bit
// attribute length and the kernel refuses the whole table (seen on a lab
// app of 1,000 tasks: "netlink receive: no such file or directory", and no
// guest could start). Here both hosts' web -> db rules name 5,000 more
// sources and destinations than the scenario has: the table applies, every
// address is in it, and the scenario's paths and denials are unchanged.
func TestLargeSets(t *testing.T) {
	s := newScenario(t)
	a, b := s.states()
	const extra = 5000
	var many []netip.Addr
	for i := range extra {
		many = append(many, netip.AddrFrom4([4]byte{100, 65, byte(i >> 8), byte(i)}))
	}
	for i := range a.Firewall {
		if r := &a.Firewall[i]; r.FromClass == "web" && r.ToClass == "db" {
			r.Dests = append(r.Dests[:len(r.Dests):len(r.Dests)], many...)
		}
	}
	for i := range b.Firewall {
		if r := &b.Firewall[i]; r.FromClass == "web" && r.ToClass == "db" {
			r.Sources = append(r.Sources[:len(r.Sources):len(r.Sources)], many...)
			r.RemoteSources = append(r.RemoteSources[:len(r.RemoteSources):len(r.RemoteSources)], many...)
		}
	}
	ctx := context.Background()
	if err := s.a.dp.Apply(ctx, a); err != nil {
		t.Fatalf("Apply on A: %v", err)
	}
	if err := s.b.dp.Apply(ctx, b); err != nil {
		t.Fatalf("Apply on B: %v", err)
	}
	last := many[extra-1].String()
	for _, h := range []*host{s.a, s.b} {
		out, err := exec.Command("ip", "netns", "exec", h.name, "nft", "list", "table", "inet", NFTTable).CombinedOutput()
		if err != nil {
			t.Fatalf("nft list on %s: %v: %s", h.name, err, out)
		}
		if !strings.Contains(string(out), last) {
			t.Fatalf("%s: the table lacks %s, the last of the %d added addresses", h.name, last, extra)
		}
	}
	driveHandshakes(t, s, 3*time.Second)
	s.mustConnect(t, s.a1, s.b1, portDB, true)
	s.mustConnect(t, s.a2, s.b1, portDB, false)
	s.mustNotConnect(t, s.a1, s.b1, portSSH)
	s.mustNotConnect(t, s.a2, s.b2, portCache)
}
