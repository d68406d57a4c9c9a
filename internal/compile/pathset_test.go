package compile

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// Every golden case's paths come back from their PathSet form the same,
// path for path.
func TestPathSetRoundTrip(t *testing.T) {
	eachGoldenAppPaths(t, func(name string, ap AppPaths) {
		b, err := json.Marshal(PathSet{Paths: ap})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var back PathSet
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, b)
		}
		wj, _ := json.Marshal(slices.Collect(ap.All()))
		gj, _ := json.Marshal(slices.Collect(back.Paths.All()))
		if string(wj) != string(gj) || back.Paths.Len() != ap.Len() || back.Paths.App != ap.App {
			t.Errorf("%s: after the path-set form\n got %s\nwant %s", name, gj, wj)
		}
	})
}

// A rule between two classes of 500 tasks is 250,000 paths, about 62 MB
// as a list; the PathSet form holds each task once.
func TestPathSetLinearInTasks(t *testing.T) {
	app := spec.App{Name: "big", Classes: []spec.Class{
		{Name: "front", Tasks: 500, Guest: spec.Guest{Runtime: "netns", Command: []string{"x"}}, Resources: spec.Resources{CPU: 1, Memory: 1 << 20}},
		{Name: "back", Tasks: 500, Guest: spec.Guest{Runtime: "netns", Command: []string{"x"}}, Resources: spec.Resources{CPU: 1, Memory: 1 << 20}},
	}, Rules: []spec.Rule{{From: "front", To: "back", Ports: []int{5432}, Encrypt: true}}}
	var servers []spec.Server
	for i := range 3 {
		servers = append(servers, spec.Server{Name: fmt.Sprintf("s%d", i), Address: fmt.Sprintf("198.18.0.%d", i+1),
			Capacity: spec.Resources{CPU: 4000, Memory: 8 << 30}})
	}
	p, err := Compile(Input{Apps: []spec.App{app}, Servers: servers})
	if err != nil {
		t.Fatal(err)
	}
	ap := p.Paths.Apps()[0]
	if ap.Len() != 250000 {
		t.Fatalf("%d paths, want 250000", ap.Len())
	}
	b, err := json.Marshal(PathSet{Paths: ap})
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 100<<10 {
		t.Errorf("path-set form of 1,000 tasks and one rule: %d bytes, want under 100 KiB", len(b))
	}
	var back PathSet
	if err := json.Unmarshal(b, &back); err != nil || back.Paths.Len() != 250000 {
		t.Fatalf("read back: %d paths, %v", back.Paths.Len(), err)
	}
}

// A PathSet that does not hold together is refused, not read as fewer or
// more paths.
func TestPathSetRefusesBrokenForm(t *testing.T) {
	for name, js := range map[string]string{
		"class out of range": `{"app":"a","n":1,"classes":[{"class":"c","tasks":[["a/c/0","s1","100.64.0.1"]]}],"sources":[{"class":0,"targets":[{"class":3,"rules":[{"protocol":"tcp","ports":[1]}]}]}]}`,
		"count":              `{"app":"a","n":5,"classes":[{"class":"c","tasks":[["a/c/0","s1","100.64.0.1"]]}],"sources":[{"class":0,"targets":[{"class":0,"rules":[{"protocol":"tcp","ports":[1]}]}]}]}`,
		"address":            `{"app":"a","n":1,"classes":[{"class":"c","tasks":[["a/c/0","s1","nope"]]}],"sources":[]}`,
	} {
		var s PathSet
		if err := json.Unmarshal([]byte(js), &s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := json.Marshal(PathSet{Paths: NewPaths([]Path{{App: "a"}}).Apps()[0]}); err == nil {
		t.Error("flat paths written in the path-set form")
	}
}
