package hoststate_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

func TestSchema(t *testing.T) {
	for _, s := range []string{"", "1.0", "1.7", hoststate.Schema} {
		if err := hoststate.CheckSchema(s); err != nil {
			t.Errorf("schema %q refused: %v", s, err)
		}
	}
	if err := hoststate.CheckSchema("2.0"); !errors.Is(err, hoststate.ErrNewerSchema) || !strings.Contains(err.Error(), "upgrade") {
		t.Errorf("schema 2.0: got %v, want ErrNewerSchema saying what to do", err)
	}
	for _, s := range []string{"1", "x.y", "1.-1", "0.9"} {
		if err := hoststate.CheckSchema(s); !errors.Is(err, hoststate.ErrInvalid) || !strings.Contains(err.Error(), "schema:") {
			t.Errorf("schema %q: got %v, want an ErrInvalid naming schema", s, err)
		}
	}
	// The newest schema is the one of derived states, then that of route
	// groups, then that of a task move; every other state is written in
	// the one before it.
	for _, c := range []struct {
		name, schema string
		back         int
	}{{"SchemaDerived", hoststate.SchemaDerived, 0}, {"SchemaGroups", hoststate.SchemaGroups, 1}, {"SchemaMove", hoststate.SchemaMove, 2}, {"Schema", hoststate.Schema, 3}} {
		if ma, mi, err := hoststate.ParseSchema(c.schema); err != nil || ma != hoststate.SchemaMajor || mi != hoststate.SchemaMinor-c.back {
			t.Errorf("%s %q parses as %d.%d (%v), want %d.%d", c.name, c.schema, ma, mi, err, hoststate.SchemaMajor, hoststate.SchemaMinor-c.back)
		}
	}
	if hoststate.ReadSchema != hoststate.SchemaDerived {
		t.Errorf("ReadSchema %s, want %s", hoststate.ReadSchema, hoststate.SchemaDerived)
	}
}

// A state of a newer major schema decodes whatever its fields have become,
// and Validate refuses it by its schema.
func TestNewerMajorRefused(t *testing.T) {
	b := []byte(`{"revision":7,"state":{"schema":"2.0","host":"s1","guests":{"now":"a map"},"address":17}}`)
	var ds hoststate.Desired
	if err := json.Unmarshal(b, &ds); err != nil {
		t.Fatalf("a newer state must decode to be refused by name: %v", err)
	}
	if ds.Revision != 7 || ds.State.Schema != "2.0" || ds.State.Host != "s1" {
		t.Fatalf("decoded %+v", ds)
	}
	err := hoststate.Validate(ds.State, hoststate.Options{Host: "s1"})
	if !errors.Is(err, hoststate.ErrNewerSchema) || !strings.Contains(err.Error(), "2.0") {
		t.Fatalf("got %v, want ErrNewerSchema naming 2.0", err)
	}
	// A newer minor version of this major is read, unknown fields ignored.
	b = []byte(`{"schema":"1.9","host":"s1","address":"198.18.0.1","vtepMAC":"02:00:00:00:00:01","someday":true}`)
	var st hoststate.State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if err := hoststate.Validate(st, hoststate.Options{Host: "s1"}); err != nil {
		t.Fatalf("schema 1.9 refused: %v", err)
	}
}

// What the compiler makes is stamped with this schema and passes the
// contract's Validate: the server never sends a state the agent refuses.
func TestCompiledStatesValidate(t *testing.T) {
	apps, err := spec.DecodeApps("shop.yaml", examples.Shop)
	if err != nil {
		t.Fatal(err)
	}
	var servers []spec.Server
	for i, n := range []string{"s1", "s2", "s3"} {
		servers = append(servers, spec.Server{Name: n, Address: netip.AddrFrom4([4]byte{198, 18, 0, byte(11 + i)}).String(),
			Capacity:  spec.Resources{CPU: 4000, Memory: 8 << 30},
			PublicKey: base64.StdEncoding.EncodeToString([]byte("public-key-of-" + n + "-000000000000000"))})
	}
	plan, err := compile.Compile(compile.Input{Apps: apps, Servers: servers})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range plan.Hosts {
		if h.Schema != hoststate.Schema {
			t.Errorf("%s: schema %q, want %q", h.Host, h.Schema, hoststate.Schema)
		}
		b, err := json.Marshal(hoststate.Desired{Revision: 1, State: h})
		if err != nil {
			t.Fatal(err)
		}
		var back hoststate.Desired
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if err := hoststate.Validate(back.State, hoststate.Options{Host: h.Host,
			ServerAddrs: []netip.Addr{netip.MustParseAddr("198.18.0.1")}}); err != nil {
			t.Errorf("%s: compiled state refused: %v", h.Host, err)
		}
	}
}

func valid() hoststate.State {
	web, db := netip.MustParseAddr("100.64.0.10"), netip.MustParseAddr("100.64.0.20")
	return hoststate.State{
		Schema: hoststate.Schema, Host: "s1", Address: netip.MustParseAddr("198.18.0.1"), VTEPMAC: "02:c0:00:00:00:01",
		Guests: []hoststate.Guest{{Task: "shop/web/0", App: "shop", Class: "web", Address: web, Network: netip.MustParsePrefix("100.64.0.0/24"), HostIf: "corg0",
			Spec: spec.Guest{Runtime: spec.RuntimeNetns}}},
		Peers: []hoststate.Peer{{Server: "s2", PublicKey: "cGVlci1rZXktb2YtczItMDAwMDAwMDAwMDAwMDAwMDA=",
			Endpoint: netip.MustParseAddrPort("198.18.0.2:51820"), AllowedIPs: []netip.Prefix{netip.PrefixFrom(db, 32)}}},
		Routes: []hoststate.Route{{Sources: []netip.Addr{web}, Dest: db, Server: "s2", Encrypt: true}},
		Firewall: []hoststate.FirewallRule{{App: "shop", FromClass: "web", ToClass: "db", Direction: hoststate.Egress,
			Sources: []netip.Addr{web}, Dests: []netip.Addr{db}, Protocol: spec.ProtoTCP, Ports: []int{5432}, Encrypt: true}},
	}
}

// staged is a copy of a task moving to s's host: the task its route
// leads to, on an interface of its own.
func staged(s *hoststate.State) hoststate.Guest {
	g := s.Guests[0]
	g.Task, g.Class, g.HostIf, g.Address = "shop/db/0", "db", "corg9", s.Routes[0].Dest
	return g
}

// A state of schema 1.4 may hold a staged copy of a task whose address
// its routes still send to the host the task leaves, and hold addresses.
func TestValidateMove(t *testing.T) {
	st := valid()
	st.Schema, st.Staged, st.Hold = hoststate.SchemaMove, []hoststate.Guest{staged(&st)}, []netip.Addr{st.Routes[0].Dest}
	if err := hoststate.Validate(st, hoststate.Options{Host: "s1"}); err != nil {
		t.Fatalf("state of a move refused: %v", err)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	opt := hoststate.Options{Host: "s1", Runtimes: []string{spec.RuntimeNetns}, ServerAddrs: []netip.Addr{netip.MustParseAddr("100.64.0.99")}}
	if err := hoststate.Validate(valid(), opt); err != nil {
		t.Fatalf("valid state refused: %v", err)
	}
	cases := []struct {
		field string
		edit  func(*hoststate.State)
	}{
		{"host", func(s *hoststate.State) { s.Host = "s2" }},
		{"keyGeneration", func(s *hoststate.State) { s.KeyGeneration = -1 }},
		{"guests[0].task", func(s *hoststate.State) { s.Guests[0].Task = "" }},
		{"guests[0].spec.runtime", func(s *hoststate.State) { s.Guests[0].Spec.Runtime = spec.RuntimeVM }},
		{"guests[0].address", func(s *hoststate.State) { s.Guests[0].Address = netip.MustParseAddr("127.0.0.2") }},
		{"guests[0].address", func(s *hoststate.State) { s.Guests[0].Address = s.Address }},
		{"guests[0].resources", func(s *hoststate.State) { s.Guests[0].Resources.CPU = -1 }},
		{"guests[0].hostIf", func(s *hoststate.State) { s.Guests[0].HostIf = "" }},
		{"vtepMAC", func(s *hoststate.State) { s.VTEPMAC = "01:00:00:00:00:01" }},
		{"peers[0].publicKey", func(s *hoststate.State) { s.Peers[0].PublicKey = "nope" }},
		// The fields of a key rotation exist from schema 1.3 on only.
		{"rotationPhase", func(s *hoststate.State) {
			s.Schema, s.RotationPhase, s.PublicKey = "1.2", hoststate.RotationAnnounce, s.Peers[0].PublicKey
		}},
		{"publicKey", func(s *hoststate.State) { s.Schema, s.PublicKey = "1.2", s.Peers[0].PublicKey }},
		{"peers[0].nextPublicKey", func(s *hoststate.State) {
			s.Schema, s.Peers[0].NextPublicKey = "1.2", "bmV4dC1rZXktb2YtczItMDAwMDAwMDAwMDAwMDAwMDA="
		}},
		{"peers[0].allowedIPs", func(s *hoststate.State) {
			s.Peers[0].AllowedIPs = append(s.Peers[0].AllowedIPs, netip.MustParsePrefix("100.64.0.99/32"))
		}},
		{"firewall[0].protocol", func(s *hoststate.State) { s.Firewall[0].Protocol = "icmp" }},
		{"guests[0].network", func(s *hoststate.State) { s.Guests[0].Network = netip.Prefix{} }},
		{"guests[0].network", func(s *hoststate.State) { s.Guests[0].Network = netip.MustParsePrefix("100.64.0.1/24") }},
		{"guests[0].address", func(s *hoststate.State) { s.Guests[0].Address = netip.MustParseAddr("100.64.1.10") }},
		{"guests[0].address", func(s *hoststate.State) { s.Guests[0].Address = netip.MustParseAddr("100.64.0.0") }},
		{"guests[0].address", func(s *hoststate.State) { s.Guests[0].Address = netip.MustParseAddr("100.64.0.255") }},
		{"firewall[0].sources[0]", func(s *hoststate.State) { s.Firewall[0].Sources[0] = netip.MustParseAddr("100.65.0.10") }},
		{"guests[1].network", func(s *hoststate.State) {
			g := s.Guests[0]
			g.Task, g.HostIf, g.Address, g.Network = "shop/web/1", "corg1", netip.MustParseAddr("100.64.1.10"), netip.MustParsePrefix("100.64.1.0/24")
			s.Guests = append(s.Guests, g)
		}},
		{"guests", func(s *hoststate.State) {
			g := s.Guests[0]
			g.Task, g.App, g.HostIf, g.Address, g.Network = "blog/web/0", "blog", "corg1", netip.MustParseAddr("100.64.0.130"), netip.MustParsePrefix("100.64.0.128/25")
			s.Guests = append(s.Guests, g)
		}},
		// The fields of a task move exist from schema 1.4 on only, and a
		// staged copy is checked as a guest is.
		{"staged", func(s *hoststate.State) { s.Staged = []hoststate.Guest{staged(s)} }},
		{"hold", func(s *hoststate.State) { s.Hold = []netip.Addr{s.Routes[0].Dest} }},
		{"staged[0].task", func(s *hoststate.State) {
			g := staged(s)
			g.Task = s.Guests[0].Task
			s.Schema, s.Staged = hoststate.SchemaMove, []hoststate.Guest{g}
		}},
		{"staged[0].hostIf", func(s *hoststate.State) {
			g := staged(s)
			g.HostIf = s.Guests[0].HostIf
			s.Schema, s.Staged = hoststate.SchemaMove, []hoststate.Guest{g}
		}},
		{"staged[0].address", func(s *hoststate.State) {
			g := staged(s)
			g.Address = netip.MustParseAddr("100.64.9.9")
			s.Schema, s.Staged = hoststate.SchemaMove, []hoststate.Guest{g}
		}},
		{"staged[0].spec.runtime", func(s *hoststate.State) {
			g := staged(s)
			g.Spec.Runtime = spec.RuntimeVM
			s.Schema, s.Staged = hoststate.SchemaMove, []hoststate.Guest{g}
		}},
		{"hold[0]", func(s *hoststate.State) { s.Schema, s.Hold = hoststate.SchemaMove, []netip.Addr{{}} }},
	}
	for _, c := range cases {
		st := valid()
		c.edit(&st)
		err := hoststate.Validate(st, opt)
		if !errors.Is(err, hoststate.ErrInvalid) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: got %v, want an ErrInvalid naming it", c.field, err)
		}
	}
	dpErr := errors.New("the data plane says no")
	opt.Dataplane = func(hoststate.State) error { return dpErr }
	if err := hoststate.Validate(valid(), opt); !errors.Is(err, dpErr) {
		t.Fatalf("Options.Dataplane not asked: %v", err)
	}
}

// Empty runtime means netns, as spec says (spec.Guest.RuntimeName).
func TestEmptyRuntimeIsNetns(t *testing.T) {
	st := valid()
	st.Guests[0].Spec.Runtime = ""
	if err := hoststate.Validate(st, hoststate.Options{Runtimes: []string{spec.RuntimeNetns}}); err != nil {
		t.Fatal(err)
	}
}
