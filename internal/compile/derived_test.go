package compile

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"math/rand"
	"path/filepath"
	"slices"
	"testing"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// listCounts is what sameAsReference compared: hosts, derived ones, those
// holding lists in full (links, ingress), allowed IPs and VXLAN guests.
type listCounts struct{ hosts, derived, full, ips, guests int }

// sameAsReference fails t unless every host of p holds the peers and
// VXLAN entries that fullLists gives from in and p's paths and ingress
// entries: with their lists as the route groups give them (Filled) for a
// derived host, its own for another; and unless every encoding of a
// derived host (json.Marshal, for an agent of every schema before 1.6,
// and the 1.6 form filled back) gives the bytes of the same state with
// the reference's lists written in (with encodings: they are most of the
// test's time). It adds what it compared to n.
func sameAsReference(t *testing.T, name string, in Input, p *Plan, n *listCounts, encodings bool) {
	t.Helper()
	ref := fullLists(t, in, p)
	if len(ref) != len(p.Hosts) {
		t.Fatalf("%s: the reference has %d hosts, the plan %d", name, len(ref), len(p.Hosts))
	}
	for i := range p.Hosts {
		d := &p.Hosts[i]
		if d.Derived {
			n.derived++
			for _, pe := range d.Peers {
				if pe.AllowedIPs != nil {
					t.Fatalf("%s, host %s: derived, but peer %s holds allowed IPs", name, d.Host, pe.Server)
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
		} else if len(d.Peers)+len(d.VXLAN) > 0 {
			n.full++
		}
		n.hosts++
		r, ok := ref[d.Host]
		if !ok {
			t.Fatalf("%s, host %s: not in the reference", name, d.Host)
		}
		for _, pe := range r.peers {
			n.ips += len(pe.AllowedIPs)
		}
		for _, v := range r.vxlan {
			n.guests += len(v.Guests)
		}
		// f is the host as it would be with the reference's lists held in
		// full.
		f := d.Filled()
		f.Peers, f.VXLAN = r.peers, r.vxlan
		gp, _ := json.Marshal(d.Filled().Peers)
		wp, _ := json.Marshal(f.Peers)
		gv, _ := json.Marshal(d.Filled().VXLAN)
		wv, _ := json.Marshal(f.VXLAN)
		if !bytes.Equal(gp, wp) || !bytes.Equal(gv, wv) {
			t.Fatalf("%s, host %s (derived %v): the lists differ from the reference's:\npeers %s\n want %s\nvxlan %s\n want %s", name, d.Host, d.Derived, gp, wp, gv, wv)
		}
		if !d.Derived || !encodings {
			continue
		}
		for _, schema := range []string{"", "1.3", "1.4", "1.5"} {
			got, err1 := d.EncodeFor(schema)
			want, err2 := f.EncodeFor(schema)
			if err1 != nil || err2 != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s, host %s: EncodeFor(%q) differs from the state with the reference's lists (%v, %v):\n got %.400s\nwant %.400s", name, d.Host, schema, err1, err2, got, want)
			}
		}
		got, _ := json.Marshal(d)
		want, _ := json.Marshal(&f)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s, host %s: json.Marshal differs from the state with the reference's lists", name, d.Host)
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
		if !back.Derived || back.Schema != hoststate.SchemaDerived {
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
}

// TestDerivedListsSameAsReference: the peers and VXLAN entries the
// compiler leaves without lists (schema 1.6) are, filled from the route
// groups, those the plan's paths and ingress entries give (fullLists), and
// so are the lists of the hosts that hold them in full (links, ingress),
// on every host of every golden case (links, ingress, egress, pending
// tasks, drains), of random inputs (links between apps among them), of a
// sized fleet and of recompiles through the cache after one-class
// changes, a server's new key and a key rotation; and every agent of an
// older schema gets the bytes of the state with those lists written in.
// (Until schema 1.6's derived form had been checked against it on all of
// these, fullLists was checked equal to the lists the compiler then made
// in full.)
func TestDerivedListsSameAsReference(t *testing.T) {
	var n listCounts
	eachGoldenPlan(t, func(name string, p *Plan) {
		sameAsReference(t, name, loadCase(t, filepath.Join("testdata", name)), p, &n, true)
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
		sameAsReference(t, "random "+itoa(it), in, p, &n, true)
	}

	servers, apps, div := 120, 8, 5
	if raceDetector {
		servers, apps, div = 30, 4, 20
	}
	in := sizedFleet(servers, apps, div)
	var k Cache
	// Each step compiles through the cache (most hosts patched over their
	// last state) and afresh (every host made whole, as in the first
	// step, where their encodings are checked).
	step := func(name string) *Plan {
		t.Helper()
		p, err := k.Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		d0 := n.derived
		sameAsReference(t, name, in, p, &n, true)
		if n.derived == d0 {
			t.Fatalf("%s: no derived host: the test guards nothing", name)
		}
		fresh, err := Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		sameAsReference(t, name+", afresh", in, fresh, &n, false)
		in.Current, in.Networks = assignments(p)
		return p
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
	// A class (worker) on (nearly) every server, then its rules' encryption
	// flipped one by one: the hosts of its tasks reach a server that also
	// runs a front task both ways, or one way only, and the way changes
	// with one kind staying (patchDerived, reachDiffs.setDiff).
	a1 := &in.Apps[1]
	if r0, r2 := a1.Rules[0], a1.Rules[2]; r0.From != "front" || r0.To != "worker" || !r0.Encrypt || r2.From != "worker" || r2.To != "worker" || r2.Encrypt {
		t.Fatalf("app %s: rules 0 and 2 are not front to worker, encrypted, and worker to itself, in plain: %+v", a1.Name, a1.Rules)
	}
	a1.Classes[1].Tasks = servers
	both := map[string]int{} // server -> 1 front, 2 worker, 3 both
	for tk := range step("fleet, a class on most servers").Tasks.All() {
		if tk.App == a1.Name && (tk.Class == "front" || tk.Class == "worker") {
			both[tk.Server] |= 1 + b2i(tk.Class == "worker")
		}
	}
	if !slices.Contains(slices.Collect(maps.Values(both)), 3) {
		t.Fatalf("app %s: no server runs both a front and a worker task: the steps below guard nothing", a1.Name)
	}
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
	if n.derived == 0 || n.full == 0 || n.ips == 0 || n.guests == 0 {
		t.Fatalf("%d derived hosts, %d holding lists in full, %d allowed IPs, %d VXLAN guests compared: the test guards too little", n.derived, n.full, n.ips, n.guests)
	}
	t.Logf("%d hosts (%d derived, %d holding lists in full), %d allowed IPs, %d VXLAN guests", n.hosts, n.derived, n.full, n.ips, n.guests)
}

// wgKey is a WireGuard public key (base64 of 32 bytes) made from b.
func wgKey(b byte) string {
	var k [32]byte
	k[0] = b
	return base64.StdEncoding.EncodeToString(k[:])
}
