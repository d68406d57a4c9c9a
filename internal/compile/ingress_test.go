package compile

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Bad input the spec alone cannot see is refused by name: a client CIDR
// holding a server's underlay address, two apps on one entry host's
// address and port through labels that meet there, an app network too
// small for its tasks and entry hosts.
func TestPublishRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(in *Input)
		want string
	}{
		{"client holds a server", func(in *Input) { in.Apps[0].Classes[0].Publish[0].From = []string{"198.18.0.0/24"} },
			"apps[shop].classes[web].publish[0].from[0]: client CIDR 198.18.0.0/24 holds the underlay address 198.18.0.11"},
		{"client in an app network", func(in *Input) { in.Apps[0].Classes[0].Publish[0].From = []string{"100.64.0.0/24"} },
			"apps[shop].classes[web].publish[0].from[0]: client CIDR 100.64.0.0/24 overlaps the overlay"},
		{"labels meet on a server", func(in *Input) {
			p := &in.Apps[1].Classes[0].Publish[0]
			p.Port, p.On.Address = 80, ""
		}, "apps[shop].classes[web].publish[0].port: 198.18.0.11:80/tcp on server s1 is already published by apps[blog].classes[page].publish[0]"},
		{"network too small", func(in *Input) { in.Apps[0].Network = "100.65.0.0/29" },
			"apps[shop].network: 100.65.0.0/29 has room for 6 addresses, the app needs 7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := loadCase(t, "testdata/ingress")
			tc.edit(&in)
			_, err := Compile(in)
			var ie *InputError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v\nwant %q", err, tc.want)
			}
		})
	}
}

// Every host state of the ingress case passes the host-state contract;
// scaling web down takes the stopped task out of every entry host's pool
// and its host's legs with it; a down server is no entry host.
func TestIngressBackends(t *testing.T) {
	in := loadCase(t, "testdata/ingress")
	plan, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	count := func(p *Plan) map[string]int {
		n := map[string]int{}
		for _, h := range p.Hosts {
			if err := hoststate.Validate(h, hoststate.Options{ServerAddrs: serverAddrs(p)}); err != nil {
				t.Errorf("host %s: %v", h.Host, err)
			}
			for _, e := range h.Ingress {
				if e.App == "shop" {
					n[h.Host] = len(e.Backends)
				}
			}
		}
		return n
	}
	if n := count(plan); n["s1"] != 2 || n["s2"] != 2 || n["s3"] != 2 {
		t.Fatalf("backends per entry host %v, want 2 on each of s1, s2, s3", n)
	}
	var cur []Assignment
	for t := range plan.Tasks.All() {
		cur = append(cur, Assignment{Task: t.ID, Server: t.Server, Address: t.Address})
	}
	in.Current = cur
	in.Apps[0].Classes[0].Tasks = 1
	small, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if n := count(small); n["s1"] != 1 || n["s2"] != 1 || n["s3"] != 1 {
		t.Fatalf("after scaling web to 1: backends %v, want 1 each", n)
	}
	for _, h := range small.Hosts {
		for _, e := range h.Ingress {
			for _, b := range e.Backends {
				if b.Task == spec.TaskID("shop", "web", 1) {
					t.Fatalf("host %s still balances to the stopped task", h.Host)
				}
			}
		}
		// web/1 ran on s3: s3 keeps no leg rule, the others no address of it.
		for _, f := range h.Firewall {
			if f.FromClass == hoststate.IngressClass && h.Host == "s3" {
				t.Fatalf("s3 keeps ingress rule %+v", f)
			}
		}
	}
	in = loadCase(t, "testdata/ingress")
	in.Servers[2].State = spec.ServerDown
	down, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if n := count(down); n["s3"] != 0 || n["s1"] != 2 {
		t.Fatalf("with s3 down: backends %v", n)
	}
}

// A Cache gives the plans Compile gives with published ports too, and
// never lets ingress additions leak into the states it keeps: the same
// input twice, then a scale-down, then the first input again.
func TestIngressCache(t *testing.T) {
	var k Cache
	in := loadCase(t, "testdata/ingress")
	small := loadCase(t, "testdata/ingress")
	small.Apps[0].Classes[0].Tasks = 1
	for i, input := range []Input{in, in, small, in} {
		want, err := Compile(input)
		if err != nil {
			t.Fatal(err)
		}
		got, err := k.Compile(input)
		if err != nil {
			t.Fatal(err)
		}
		wj, _ := json.Marshal(want)
		gj, _ := json.Marshal(got)
		if !bytes.Equal(wj, gj) {
			t.Fatalf("compile %d: the cached plan differs from Compile's", i)
		}
	}
}
