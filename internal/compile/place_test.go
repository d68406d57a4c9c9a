package compile

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

func fleet(n int) []spec.Server {
	var out []spec.Server
	for i := range n {
		out = append(out, spec.Server{Name: fmt.Sprintf("s%02d", i), Address: fmt.Sprintf("198.18.0.%d", i+1),
			// Later servers are bigger, so less loaded by the same task.
			Capacity: spec.Resources{CPU: spec.MilliCPU(1000 * (i + 1)), Memory: 8 << 30}})
	}
	return out
}

func oneTask(labels map[string]string) []spec.App {
	return []spec.App{{Name: "a", Classes: []spec.Class{{Name: "x", Tasks: 1,
		Resources: spec.Resources{CPU: 500, Memory: 1 << 20}, Placement: spec.Placement{Labels: labels}}}}}
}

func TestRejectedCapped(t *testing.T) {
	in := Input{Servers: fleet(30), Apps: oneTask(nil)}
	in.Servers[3].State = spec.ServerDown
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	r := p.Tasks.Flat()[0].Reason
	if p.Tasks.Flat()[0].Server != "s29" || len(r.Rejected) != DefaultMaxRejected || r.Omitted != 29-DefaultMaxRejected {
		t.Fatalf("on %s, %d rejected, %d omitted", p.Tasks.Flat()[0].Server, len(r.Rejected), r.Omitted)
	}
	// The runners-up are the next least loaded: s13..s28.
	for i, rj := range r.Rejected {
		if want := fmt.Sprintf("s%02d", 13+i); rj.Server != want || !strings.HasPrefix(rj.Why, "more loaded") {
			t.Errorf("rejected[%d] = %+v, want %s more loaded", i, rj, want)
		}
	}
	in.MaxRejected = -1
	p, err = Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	r = p.Tasks.Flat()[0].Reason
	if len(r.Rejected) != 29 || r.Omitted != 0 || r.Rejected[3].Why != "down" {
		t.Errorf("uncapped: %d rejected, %d omitted, s03: %+v", len(r.Rejected), r.Omitted, r.Rejected[3])
	}
}

func TestRejectionWhys(t *testing.T) {
	srv := fleet(5)
	srv[0].State = spec.ServerDraining
	srv[1].Labels = map[string]string{"zone": "b"}
	srv[2].Capacity.CPU = 400
	srv[3].Labels = map[string]string{"zone": "a"}
	srv[4].Labels = map[string]string{"zone": "a"}
	srv[4].Capacity.CPU = 1000
	p, err := Compile(Input{Servers: srv, Apps: oneTask(map[string]string{"zone": "a"}), MaxRejected: -1})
	if err != nil {
		t.Fatal(err)
	}
	tk := p.Tasks.Flat()[0]
	want := map[string]string{
		"s00": "draining",
		"s01": "has zone=b, needs zone=a",
		"s02": "missing label zone=a",
		"s04": "more loaded (cpu 50%, mem 0%)",
	}
	if tk.Server != "s03" || tk.Reason.Chosen != "runs no task of a yet; least loaded that fits (cpu 12%, mem 0%)" {
		t.Errorf("chose %s: %s", tk.Server, tk.Reason.Chosen)
	}
	for _, r := range tk.Reason.Rejected {
		if want[r.Server] != r.Why {
			t.Errorf("%s: %q, want %q", r.Server, r.Why, want[r.Server])
		}
	}
	// Too big for any server that has the label.
	apps := oneTask(map[string]string{"zone": "a"})
	apps[0].Classes[0].Resources.CPU = 5000
	_, err = Compile(Input{Servers: srv, Apps: apps})
	var pe *PlacementError
	if !errors.As(err, &pe) || pe.Closest != "s03" || !strings.Contains(err.Error(), "short cpu 1000m") {
		t.Errorf("error %v", err)
	}
	// No server has the label at all.
	apps[0].Classes[0].Placement.Labels = map[string]string{"zone": "z"}
	_, err = Compile(Input{Servers: srv, Apps: apps})
	if !errors.As(err, &pe) || pe.Closest != "" || !strings.Contains(err.Error(), "no ready server has labels zone=z") {
		t.Errorf("error %v", err)
	}
}

// TestDoesNotFitWhy checks the message for a server that is full.
func TestDoesNotFitWhy(t *testing.T) {
	srv := fleet(2)
	srv[0].Capacity = spec.Resources{CPU: 100, Memory: 1 << 20}
	p, err := Compile(Input{Servers: srv, Apps: oneTask(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if r := p.Tasks.Flat()[0].Reason.Rejected; len(r) != 1 || r[0].Why != "does not fit: needs 500m cpu, 100m free" {
		t.Errorf("%+v", r)
	}
}
