package compile

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/rand"
	"path/filepath"
	"testing"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// withFullLists runs f with the compiler making every peer's and VXLAN
// entry's list in full (deriveLists off), as it did before schema 1.6.
func withFullLists(f func()) {
	deriveLists = false
	defer func() { deriveLists = true }()
	f()
}

// sameAsFull fails t unless every host of derived (a plan made with
// deriveLists) holds what the same host of full (made without) holds:
// its peers and VXLAN entries with their lists as the route groups give
// them (Filled) equal to full's, and the same bytes for an agent of every
// schema before 1.6. It returns how many hosts of derived are derived.
func sameAsFull(t *testing.T, name string, in Input, derived, full *Plan) int {
	t.Helper()
	if len(derived.Hosts) != len(full.Hosts) {
		t.Fatalf("%s: %d hosts against %d", name, len(derived.Hosts), len(full.Hosts))
	}
	// The independent reference (fullLists), from the derived plan's
	// paths and ingress entries, must agree with the lists made in full
	// before it replaces them.
	oracle := fullLists(t, in, derived)
	if len(oracle) != len(full.Hosts) {
		t.Fatalf("%s: the reference has %d hosts, the plan %d", name, len(oracle), len(full.Hosts))
	}
	n := 0
	for i := range derived.Hosts {
		d, f := &derived.Hosts[i], &full.Hosts[i]
		if f.Derived {
			t.Fatalf("%s, host %s: derived without deriveLists", name, f.Host)
		}
		if d.Derived {
			n++
			for _, p := range d.Peers {
				if p.AllowedIPs != nil {
					t.Fatalf("%s, host %s: derived, but peer %s holds allowed IPs", name, d.Host, p.Server)
				}
			}
			for _, v := range d.VXLAN {
				if v.Guests != nil {
					t.Fatalf("%s, host %s: derived, but VXLAN entry %s holds guests", name, d.Host, v.Server)
				}
			}
			if err := hoststate.CheckDerived(d); err != nil {
				t.Fatalf("%s, host %s: %v", name, d.Host, err)
			}
		}
		x := d.Filled()
		gp, _ := json.Marshal(x.Peers)
		wp, _ := json.Marshal(f.Peers)
		gv, _ := json.Marshal(x.VXLAN)
		wv, _ := json.Marshal(f.VXLAN)
		if !bytes.Equal(gp, wp) || !bytes.Equal(gv, wv) {
			t.Fatalf("%s, host %s: derived lists differ from the full ones:\npeers %s\n want %s\nvxlan %s\n want %s", name, d.Host, gp, wp, gv, wv)
		}
		ref := oracle[f.Host]
		rp, _ := json.Marshal(ref.peers)
		rv, _ := json.Marshal(ref.vxlan)
		if !bytes.Equal(rp, wp) || !bytes.Equal(rv, wv) {
			t.Fatalf("%s, host %s: the reference lists differ from the full ones:\npeers %s\n full %s\nvxlan %s\n full %s", name, d.Host, rp, wp, rv, wv)
		}
		oracled.hosts++
		if !d.Derived && len(f.Peers)+len(f.VXLAN) > 0 {
			oracled.full++
		}
		for _, pe := range ref.peers {
			oracled.ips += len(pe.AllowedIPs)
		}
		for _, v := range ref.vxlan {
			oracled.guests += len(v.Guests)
		}
		for _, schema := range []string{"", "1.3", "1.4", "1.5"} {
			got, err1 := d.EncodeFor(schema)
			want, err2 := f.EncodeFor(schema)
			if err1 != nil || err2 != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s, host %s: EncodeFor(%q) differs from the full state's (%v, %v):\n got %.400s\nwant %.400s", name, d.Host, schema, err1, err2, got, want)
			}
		}
		got, _ := json.Marshal(d)
		want, _ := json.Marshal(f)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s, host %s: json.Marshal differs from the full state's", name, d.Host)
		}
		// An agent of 1.6 gets the derived form, which it fills into
		// the same lists.
		b, err := d.EncodeFor(hoststate.SchemaDerived)
		if err != nil {
			t.Fatal(err)
		}
		var back hoststate.State
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if back.Derived != d.Derived || (d.Derived && back.Schema != hoststate.SchemaDerived) {
			t.Fatalf("%s, host %s: EncodeFor(1.6) gives derived %v, schema %s", name, d.Host, back.Derived, back.Schema)
		}
		bx := back.Filled()
		if g, _ := json.Marshal(bx.Peers); !bytes.Equal(g, wp) {
			t.Fatalf("%s, host %s: the 1.6 form's peers, filled: %s\nwant %s", name, d.Host, g, wp)
		}
		if g, _ := json.Marshal(bx.VXLAN); !bytes.Equal(g, wv) {
			t.Fatalf("%s, host %s: the 1.6 form's VXLAN entries, filled: %s\nwant %s", name, d.Host, g, wv)
		}
	}
	return n
}

// oracled counts what sameAsFull compared with the reference: hosts, those
// with lists held in full (links, ingress), allowed IPs, VXLAN guests.
var oracled struct{ hosts, full, ips, guests int }

// TestDerivedListsSameAsFull: the peers and VXLAN entries the compiler
// leaves without lists (schema 1.6) are, filled from the route groups,
// those it made in full before, on every host of every golden case
// (links, ingress, egress, pending tasks, key rotation, drains), of
// random inputs (links between apps among them), of a sized fleet and of
// recompiles through the cache after one-class changes; and every agent
// of an older schema gets byte for byte the bytes it got before.
func TestDerivedListsSameAsFull(t *testing.T) {
	derived := 0
	eachGoldenPlan(t, func(name string, p *Plan) {
		in := loadCase(t, filepath.Join("testdata", name))
		var full *Plan
		withFullLists(func() {
			var err error
			if full, err = Compile(in); err != nil {
				t.Fatal(err)
			}
		})
		derived += sameAsFull(t, name, in, p, full)
	})
	r := rand.New(rand.NewSource(6))
	for it := range 60 {
		in := randInput(r)
		p, err := Compile(in)
		var pe *PlacementError
		if errors.As(err, &pe) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var full *Plan
		withFullLists(func() { full, err = Compile(in) })
		if err != nil {
			t.Fatal(err)
		}
		derived += sameAsFull(t, "random "+itoa(it), in, p, full)
	}

	servers, apps, div := 120, 8, 5
	if raceDetector {
		servers, apps, div = 30, 4, 20
	}
	in := sizedFleet(servers, apps, div)
	var kd, kf Cache
	step := func(name string) {
		t.Helper()
		p, err := kd.Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		var full *Plan
		withFullLists(func() { full, err = kf.Compile(in) })
		if err != nil {
			t.Fatal(err)
		}
		n := sameAsFull(t, name, in, p, full)
		if n == 0 {
			t.Fatalf("%s: no derived host: the test guards nothing", name)
		}
		derived += n
		// Afresh (every host made whole), against the full lists made
		// through the cache.
		fresh, err := Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		derived += sameAsFull(t, name+", afresh", in, fresh, full)
		in.Current, in.Networks = assignments(p)
	}
	step("fleet")
	for i := range 6 {
		a := &in.Apps[i%len(in.Apps)]
		cl := &a.Classes[i%len(a.Classes)]
		if i%3 == 2 {
			cl.Tasks = max(1, cl.Tasks-2) // tasks leave servers
		} else {
			cl.Tasks += 1 + i
		}
		step("fleet, change " + itoa(i))
	}
	// A class (worker) on every server, then its rules' encryption
	// flipped one by one: the hosts of its tasks reach a server that also
	// runs a front task both ways, or one way only, and the way changes
	// with one kind staying (patchDerived, reachDiffs.setDiff).
	a1 := &in.Apps[1]
	if r0, r2 := a1.Rules[0], a1.Rules[2]; r0.From != "front" || r0.To != "worker" || !r0.Encrypt || r2.From != "worker" || r2.To != "worker" || r2.Encrypt {
		t.Fatalf("app %s: rules 0 and 2 are not front to worker, encrypted, and worker to itself, in plain: %+v", a1.Name, a1.Rules)
	}
	a1.Classes[1].Tasks = 2 * servers
	step("fleet, a class on every server")
	a1.Rules[0].Encrypt = false // front's servers: plain only
	step("fleet, a rule in plain")
	a1.Rules[2].Encrypt = true // front's servers: both ways
	step("fleet, a self-rule encrypted")
	a1.Rules[0].Encrypt = true // front's servers: encrypted only
	step("fleet, the rule encrypted again")
	// A server's meta changes: its entries on every host change.
	in.Servers[3].PublicKey = "key-rotated"
	step("fleet, new key")
	// A hitless key rotation: its peers hold the next key beside the
	// current one (announce), then as the current one (commit).
	cur, next := wgKey(1), wgKey(2)
	in.Servers[5].PublicKey = cur
	in.Servers[5].Rotation = &spec.KeyRotation{Generation: 1, Phase: spec.RotationAnnounce, NextPublicKey: next}
	step("fleet, rotation announced")
	in.Servers[5].PublicKey, in.Servers[5].Rotation.Phase = next, spec.RotationCommit
	step("fleet, rotation committed")
	if derived == 0 {
		t.Fatal("no derived host")
	}
	t.Logf("reference = full = derived, filled: %d hosts (%d derived, %d holding lists in full), %d allowed IPs, %d VXLAN guests",
		oracled.hosts, derived, oracled.full, oracled.ips, oracled.guests)
}

// wgKey is a WireGuard public key (base64 of 32 bytes) made from b.
func wgKey(b byte) string {
	var k [32]byte
	k[0] = b
	return base64.StdEncoding.EncodeToString(k[:])
}
