package store

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/corridor-dev/corridor/internal/compile"
)

// TestPlacementEncode: AppPlacement.Encode writes json.Marshal's bytes,
// with and without tasks, paths and pending tasks, and reads back.
func TestPlacementEncode(t *testing.T) {
	paths := compile.NewPaths([]compile.Path{
		{App: "a", From: "a/web/0", To: "a/db/0", FromClass: "web", ToClass: "db", FromServer: "s1", ToServer: "s<2",
			FromAddr: netip.MustParseAddr("100.64.0.1"), ToAddr: netip.MustParseAddr("100.64.0.2"), Protocol: "tcp", Ports: []int{5432}, Encrypt: true},
		{App: "a", ToApp: "b", From: "a/web/0", To: "b/api/0", FromClass: "web", ToClass: "api", Protocol: "udp", Ports: []int{53, 5353}, Local: true},
	}).Apps()[0]
	task := compile.Task{ID: "a/web/0", App: "a", Class: "web", Server: "s1", Address: netip.MustParseAddr("100.64.0.1"),
		Reason: compile.Reason{Chosen: "least loaded & first <by name>", Rejected: []compile.Rejection{{Server: "s2", Why: "full"}}, Omitted: 3}}
	for name, p := range map[string]AppPlacement{
		"zero":    {},
		"no path": {App: "a", Network: netip.MustParsePrefix("100.64.0.0/24"), Tasks: []compile.Task{task}},
		"paths":   {App: "a", Network: netip.MustParsePrefix("100.64.0.0/24"), Tasks: []compile.Task{task}, Paths: paths, Revision: 7},
		"pending": {App: "a", Tasks: []compile.Task{}, Paths: paths, Pending: []compile.Task{{ID: "a/web/1", Pending: "no server fits"}}},
	} {
		want, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := p.Encode()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: Encode = %s, %v\nwant %s", name, got, err, want)
		}
		var back AppPlacement
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if again, _ := back.Encode(); !bytes.Equal(again, want) {
			t.Errorf("%s: decoded and encoded again = %s\nwant %s", name, again, want)
		}
	}
}
