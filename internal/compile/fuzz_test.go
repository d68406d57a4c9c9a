package compile

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strconv"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// byteSource turns fuzz bytes into choices; past the end every choice is 0.
type byteSource struct{ b []byte }

func (s *byteSource) next() byte {
	if len(s.b) == 0 {
		return 0
	}
	v := s.b[0]
	s.b = s.b[1:]
	return v
}

func (s *byteSource) pick(opts []string) string { return opts[int(s.next())%len(opts)] }
func (s *byteSource) n(max int) int             { return int(s.next()) % max }

// fuzzInput builds an Input from bytes. It reaches valid and invalid input
// alike: duplicate and odd names, bad addresses, negative resources and
// task counts, unknown classes, bad ports and protocols, overlapping
// networks, a Current naming anything.
func fuzzInput(data []byte) Input {
	s := &byteSource{data}
	var in Input
	names := []string{"s1", "s2", "s3", "s4", "", "s/5", "s1"}
	addrs := []string{"198.18.0.1", "198.18.0.2", "198.18.0.3", "fd00::1", "bad", "198.18.0.1", "::ffff:198.18.0.9"}
	states := []string{"", "ready", "draining", "down", "weird"}
	for range s.n(7) {
		in.Servers = append(in.Servers, spec.Server{
			Name:          s.pick(names),
			Address:       s.pick(addrs),
			Capacity:      spec.Resources{CPU: spec.MilliCPU(int(s.next())*40 - 400), Memory: spec.Bytes(int64(int8(s.next())) << 24)},
			Labels:        map[string]string{"zone": s.pick([]string{"a", "b", ""})},
			State:         s.pick(states),
			WireGuardPort: []int{0, 0, 51821, 70000, -1}[s.n(5)],
			PublicKey:     "k" + strconv.Itoa(s.n(3)),
		})
	}
	appNames := []string{"a", "b", "c", "a", "", "x y"}
	nets := []string{"", "", "100.64.0.0/24", "100.64.0.0/16", "10.0.0.1/24", "bad", "100.64.0.0/30", "fd00::/120", "100.64.1.0/24"}
	classNames := []string{"web", "db", "app", "web", "", "q"}
	for range s.n(4) {
		a := spec.App{Name: s.pick(appNames), Network: s.pick(nets)}
		for range s.n(4) {
			c := spec.Class{
				Name:      s.pick(classNames),
				Tasks:     int(int8(s.next())) % 12,
				Resources: spec.Resources{CPU: spec.MilliCPU(int(int8(s.next())) * 20), Memory: spec.Bytes(int64(s.next()) << 20)},
				Guest:     spec.Guest{Runtime: spec.RuntimeNetns, Env: map[string]string{"K": "v"}},
			}
			if s.n(3) == 0 {
				c.Placement.Labels = map[string]string{"zone": s.pick([]string{"a", "b"})}
			}
			if s.n(3) == 0 {
				c.Placement.SpreadBy = s.pick([]string{"zone", "rack"})
			}
			a.Classes = append(a.Classes, c)
		}
		for range s.n(5) {
			r := spec.Rule{
				From:     s.pick(classNames),
				To:       s.pick(classNames),
				Protocol: s.pick([]string{"", "tcp", "udp", "icmp"}),
				Encrypt:  s.n(2) == 0,
			}
			for range 1 + s.n(3) {
				r.Ports = append(r.Ports, []int{80, 443, 0, 70000, 5432, 80}[s.n(6)])
			}
			a.Rules = append(a.Rules, r)
		}
		in.Apps = append(in.Apps, a)
	}
	for range s.n(8) {
		in.Current = append(in.Current, Assignment{
			Task:    s.pick(appNames) + "/" + s.pick(classNames) + "/" + strconv.Itoa(s.n(4)),
			Server:  s.pick(names),
			Address: []netip.Addr{{}, netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("100.64.0.255"), netip.MustParseAddr("10.0.0.2")}[s.n(5)],
		})
	}
	switch s.n(4) {
	case 1:
		in.Pool = netip.MustParsePrefix("10.0.0.0/23")
	case 2:
		in.Pool = netip.MustParsePrefix("fd00::/64")
	}
	if s.n(2) == 0 {
		in.Networks = map[string]netip.Prefix{"a": netip.MustParsePrefix("100.64.0.0/24"), "b": {}}
	}
	in.MaxRejected = int(int8(s.next())) % 4
	return in
}

// FuzzCompile: no input makes Compile panic; every plan it returns passes
// the invariants and is reproducible byte for byte; every error is typed.
func FuzzCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{3, 0, 0, 100, 64, 0, 0, 0, 0, 1, 1, 100, 64, 1, 0, 0, 0, 2, 2, 100, 64, 2, 0, 1, 2, 2, 0, 3, 5, 10, 0, 1, 1, 4, 8, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := fuzzInput(data)
		p, err := Compile(in)
		if err != nil {
			var ie *InputError
			var pe *PlacementError
			if !errors.As(err, &ie) && !errors.As(err, &pe) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		if err := checkPlan(in, p); err != nil {
			t.Fatalf("invariant: %v", err)
		}
		p2, err := Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		b1, _ := json.Marshal(p)
		b2, _ := json.Marshal(p2)
		if !bytes.Equal(b1, b2) {
			t.Fatal("two compiles of one input differ")
		}
	})
}
