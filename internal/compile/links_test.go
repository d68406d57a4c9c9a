package compile

import (
	"bytes"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// appToApp is the app-to-app case with f applied to the apps by name.
func appToApp(t *testing.T, f func(byName map[string]*spec.App)) Input {
	t.Helper()
	in := loadCase(t, filepath.Join("testdata", "app-to-app"))
	in.Apps = slices.Clone(in.Apps)
	m := map[string]*spec.App{}
	for i := range in.Apps {
		m[in.Apps[i].Name] = &in.Apps[i]
	}
	if f != nil {
		f(m)
	}
	return in
}

func crossPaths(p *Plan) []Path {
	var out []Path
	for pa := range p.Paths.All() {
		if pa.ToApp != "" {
			out = append(out, pa)
		}
	}
	return out
}

// crossState is everything of the hosts' states that belongs to the link
// between shop and ledger: firewall rules across apps, and shop's
// CORRIDOR_PEERS_BOOKS.
func crossState(p *Plan) (rules int, env int) {
	for _, h := range p.Hosts {
		for _, f := range h.Firewall {
			if f.ToApp != "" {
				rules++
			}
		}
		for _, g := range h.Guests {
			if _, ok := g.Env[spec.PeersEnvName("books")]; ok {
				env++
			}
		}
	}
	return rules, env
}

// The compiled states of two linked apps pass the host-state contract
// (the firewall rules across apps are checked against both networks), and
// the rules across apps admit the importing classes' tasks only, to the
// exporting class's tasks only.
func TestLinkStatesValidate(t *testing.T) {
	_, p := compileCase(t, "app-to-app")
	if n := len(crossPaths(p)); n != 8 {
		t.Fatalf("%d paths across apps, want 8 (web and app, 2 tasks each, to ledger's 2 api tasks)", n)
	}
	addrOf := map[string][]string{}
	for tk := range p.Tasks.All() {
		addrOf[tk.App+"/"+tk.Class] = append(addrOf[tk.App+"/"+tk.Class], tk.Address.String())
	}
	for _, h := range p.Hosts {
		if err := hoststate.Validate(h, hoststate.Options{Host: h.Host}); err != nil {
			t.Errorf("%s: %v", h.Host, err)
		}
		for _, f := range h.Firewall {
			if f.ToApp == "" {
				continue
			}
			if f.App != "shop" || f.ToApp != "ledger" || f.ToClass != "api" || (f.FromClass != "web" && f.FromClass != "app") || !slices.Equal(f.Ports, []int{7000}) {
				t.Errorf("%s: rule across apps %+v", h.Host, f)
			}
			for _, a := range f.Sources {
				if !slices.Contains(addrOf["shop/"+f.FromClass], a.String()) {
					t.Errorf("%s: source %s is not a task of shop/%s", h.Host, a, f.FromClass)
				}
			}
			for _, a := range f.Dests {
				if !slices.Contains(addrOf["ledger/api"], a.String()) {
					t.Errorf("%s: dest %s is not a task of ledger/api", h.Host, a)
				}
			}
		}
	}
	// A rule across apps whose dests leave ToApp's network is refused by
	// the agent whatever signed it.
	h := hostOf(t, p, "s1")
	st := *h
	st.Firewall = slices.Clone(st.Firewall)
	for i := range st.Firewall {
		if st.Firewall[i].ToApp != "" && st.Firewall[i].Direction == Ingress {
			st.Firewall[i].Dests = append(slices.Clone(st.Firewall[i].Dests), taskOf(t, p, "shop/web/0").Address)
			break
		}
	}
	if err := hoststate.Validate(st, hoststate.Options{Host: "s1"}); !errors.Is(err, hoststate.ErrInvalid) || !strings.Contains(err.Error(), "outside app ledger's network") {
		t.Fatalf("a rule across apps with a dest outside the exporter's network: %v", err)
	}
}

// Deleting either side, or withdrawing the export, removes the paths
// across apps and everything the hosts had for them, and says why.
func TestLinkUnresolved(t *testing.T) {
	cases := []struct {
		name string
		edit func(map[string]*spec.App)
		why  string
	}{
		{"exporter deleted", nil, "no app ledger"},
		{"export withdrawn", func(m map[string]*spec.App) { m["ledger"].Exports = m["ledger"].Exports[1:] }, "app ledger does not export accounts"},
		{"export on another protocol", func(m map[string]*spec.App) {
			m["ledger"].Exports = slices.Clone(m["ledger"].Exports)
			m["ledger"].Exports[0].Protocol = spec.ProtoUDP
		}, "ledger/accounts is exported on udp, not tcp"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := appToApp(t, c.edit)
			if c.edit == nil {
				in.Apps = slices.DeleteFunc(in.Apps, func(a spec.App) bool { return a.Name == "ledger" })
			}
			p, err := Compile(in)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkPlan(in, p); err != nil {
				t.Fatal(err)
			}
			if n := len(crossPaths(p)); n != 0 {
				t.Errorf("%d paths across apps remain", n)
			}
			if r, e := crossState(p); r != 0 || e != 0 {
				t.Errorf("hosts keep %d firewall rules across apps and %d CORRIDOR_PEERS_BOOKS", r, e)
			}
			if len(p.Unresolved) != 2 {
				t.Fatalf("unresolved: %+v, want shop's two rules to books", p.Unresolved)
			}
			for i, u := range p.Unresolved {
				if u.App != "shop" || u.Rule != 2+i || u.To != "books" || u.Service != "ledger/accounts" || u.Why != c.why || !slices.Equal(u.Ports, []int{7000}) {
					t.Errorf("unresolved[%d] = %+v, want why %q", i, u, c.why)
				}
			}
		})
	}
	// Deleting the importer leaves the exporter alone: its own paths only.
	in := appToApp(t, nil)
	in.Apps = slices.DeleteFunc(in.Apps, func(a spec.App) bool { return a.Name == "shop" })
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := crossState(p); r != 0 || len(crossPaths(p)) != 0 || len(p.Unresolved) != 0 {
		t.Errorf("importer deleted: %d rules across apps, %+v unresolved", r, p.Unresolved)
	}
}

// A rule naming exported and unexported ports gets paths on the exported
// ones; the others are unresolved.
func TestLinkPartlyExported(t *testing.T) {
	in := appToApp(t, func(m map[string]*spec.App) {
		s := m["shop"]
		s.Rules = slices.Clone(s.Rules)
		s.Rules[2].Ports = []int{7001, 7000}
	})
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, pa := range crossPaths(p) {
		if !slices.Equal(pa.Ports, []int{7000}) {
			t.Errorf("path %s -> %s on %v, want [7000] (7001 is not exported as accounts)", pa.From, pa.To, pa.Ports)
		}
	}
	if len(p.Unresolved) != 1 || p.Unresolved[0].Rule != 2 || !slices.Equal(p.Unresolved[0].Ports, []int{7001}) {
		t.Fatalf("unresolved %+v", p.Unresolved)
	}
}

// A class pair across apps is encrypted or plain as a whole: the
// exporter's rule back through an import of its own may not disagree.
func TestLinkEncryptConflict(t *testing.T) {
	in := appToApp(t, func(m map[string]*spec.App) {
		s, l := m["shop"], m["ledger"]
		s.Exports = []spec.Export{{Name: "front", Class: "web", Ports: []int{9000}, Protocol: spec.ProtoTCP}}
		l.Imports = []spec.Import{{Service: "shop/front", As: "front"}}
		l.Rules = append(slices.Clone(l.Rules), spec.Rule{From: "api", To: "front", Ports: []int{9000}, Protocol: spec.ProtoTCP, Encrypt: true})
	})
	_, err := Compile(in)
	var ie *InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "ledger/api and shop/web") {
		t.Fatalf("got %v, want an InputError naming the pair", err)
	}
	// Agreeing, it compiles, with paths both ways.
	in.Apps[0].Rules[len(in.Apps[0].Rules)-1].Encrypt = false
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkPlan(in, p); err != nil {
		t.Fatal(err)
	}
}

// A Cache gives Compile's bytes as the exporter goes and comes back.
func TestLinkCache(t *testing.T) {
	full := appToApp(t, nil)
	gone := appToApp(t, func(m map[string]*spec.App) { m["ledger"].Exports = nil })
	var k Cache
	for i, in := range []Input{full, gone, full, gone} {
		want, err := Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		got, err := k.Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		if w, g := mustJSON(t, want), mustJSON(t, got); !bytes.Equal(w, g) {
			t.Fatalf("step %d: cached plan differs: %s", i, firstDiff(g, w))
		}
	}
}
