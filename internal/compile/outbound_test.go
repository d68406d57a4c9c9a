package compile

import (
	"errors"
	"strings"
	"testing"

	"net/netip"

	"github.com/corridor-dev/corridor/internal/hoststate"
)

// An outside destination that holds a server's underlay address, or
// overlaps an app network the compiler allocated, is refused by name.
func TestOutsideRefused(t *testing.T) {
	for _, tc := range []struct {
		to, want string
	}{
		{"198.18.0.0/24", "apps[shop].egress[0].to[0]: destination 198.18.0.0/24 holds the underlay address 198.18.0.11"},
		{"198.18.0.12", "apps[shop].egress[0].to[0]: destination 198.18.0.12/32 holds the underlay address 198.18.0.12"},
	} {
		in := loadCase(t, "testdata/egress")
		in.Apps[0].Egress[0].To = []string{tc.to}
		_, err := Compile(in)
		var ie *InputError
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("to %s: error %v, want %q", tc.to, err, tc.want)
		}
	}
	in := loadCase(t, "testdata/egress")
	in.Apps[0].Resolvers = []string{"10.0.0.1"}
	in.Apps[0].Network = "10.0.0.0/24"
	if _, err := Compile(in); err == nil || !strings.Contains(err.Error(), "apps[shop].resolvers[0]: resolver 10.0.0.1 overlaps the overlay network 10.0.0.0/24") {
		t.Errorf("resolver in the app network: %v", err)
	}
}

// Every host state of the egress case passes the host-state contract,
// and a host's outbound names only its own guests.
func TestOutboundValid(t *testing.T) {
	plan, err := Compile(loadCase(t, "testdata/egress"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, h := range plan.Hosts {
		if err := hoststate.Validate(h, hoststate.Options{ServerAddrs: serverAddrs(plan)}); err != nil {
			t.Errorf("host %s: %v", h.Host, err)
		}
		for _, g := range h.Guests {
			if len(g.Resolvers) != 1 || g.Resolvers[0].String() != "198.18.0.253" {
				t.Errorf("guest %s resolvers %v", g.Task, g.Resolvers)
			}
		}
		n += len(h.Outbound)
	}
	// web: 2 tasks x 2 entries; resolvers: 5 tasks' classes per host x 2 protocols.
	if n == 0 {
		t.Fatal("no outbound anywhere")
	}
}

func serverAddrs(p *Plan) (out []netip.Addr) {
	for _, h := range p.Hosts {
		out = append(out, h.Address)
	}
	return out
}
