package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"iter"
	"net/netip"
	"reflect"
	"testing"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
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

// Paths a compile made go to etcd in their path-set form: a record of an
// app of two classes of 500 tasks and one rule between them (250,000
// paths, 62 MB as a list) stays far below etcd's request limit, and reads
// back with every path.
func TestPlacementPathSet(t *testing.T) {
	class := func(name string) spec.Class {
		return spec.Class{Name: name, Tasks: 500, Guest: spec.Guest{Runtime: "netns", Command: []string{"x"}},
			Resources: spec.Resources{CPU: 1, Memory: 1 << 20}}
	}
	app := spec.App{Name: "big", Classes: []spec.Class{class("front"), class("back")},
		Rules: []spec.Rule{{From: "front", To: "back", Ports: []int{5432}, Encrypt: true}}}
	var servers []spec.Server
	for i := range 3 {
		servers = append(servers, spec.Server{Name: fmt.Sprintf("s%d", i), Address: fmt.Sprintf("198.18.0.%d", i+1),
			Capacity: spec.Resources{CPU: 4000, Memory: 8 << 30}})
	}
	plan, err := compile.Compile(compile.Input{Apps: []spec.App{app}, Servers: servers})
	if err != nil {
		t.Fatal(err)
	}
	p := AppPlacement{App: "big", Network: plan.Networks[0].Network, Tasks: plan.Tasks.Flat(), Paths: plan.Paths.Apps()[0]}
	b, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 1<<20 || !bytes.Contains(b, []byte(`"paths":[],`)) || !bytes.Contains(b, []byte(`"pathSet":{`)) {
		t.Fatalf("record of %d bytes (want the path-set form, under 1 MiB): %.300s", len(b), b)
	}
	var back AppPlacement
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Paths.Len() != 250000 || len(back.Tasks) != 1000 {
		t.Fatalf("read back %d paths and %d tasks", back.Paths.Len(), len(back.Tasks))
	}
	i := 0
	next, stop := iter.Pull(back.Paths.All())
	defer stop()
	for want := range p.Paths.All() {
		got, ok := next()
		if !ok || !reflect.DeepEqual(got, want) {
			t.Fatalf("path %d: got %+v, want %+v", i, got, want)
		}
		i++
	}
	if again, err := back.Encode(); err != nil || !bytes.Equal(again, b) {
		t.Errorf("decoded and encoded again: %d bytes, %v; want the same %d bytes", len(again), err, len(b))
	}
}
