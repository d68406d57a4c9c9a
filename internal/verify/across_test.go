package verify

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// shopAndLedger is the shop importing ledger's accounts (api's 7000) as
// books: encrypted from app, plain from web. ledger's api also serves
// 7001, exported as reports, which the shop does not import.
func shopAndLedger() ([]spec.App, []compile.Task) {
	apps, tasks := shop()
	s := &apps[0]
	s.Imports = []spec.Import{{Service: "ledger/accounts", As: "books"}}
	s.Rules = append(s.Rules,
		spec.Rule{From: "app", To: "books", Ports: []int{7000}, Protocol: "tcp", Encrypt: true},
		spec.Rule{From: "web", To: "books", Ports: []int{7000}, Protocol: "tcp", Encrypt: false})
	apps = append(apps, spec.App{
		Name: "ledger",
		Classes: []spec.Class{{Name: "api", Tasks: 2, Ports: []spec.Port{{Port: 7000, Protocol: "tcp"}, {Port: 7001, Protocol: "tcp"}}},
			{Name: "admin", Tasks: 1, Ports: []spec.Port{{Port: 443, Protocol: "tcp"}}}},
		Exports: []spec.Export{{Name: "accounts", Class: "api", Ports: []int{7000}, Protocol: "tcp"},
			{Name: "reports", Class: "api", Ports: []int{7001}, Protocol: "tcp"}},
	})
	tk := func(id, server, addr string) compile.Task {
		t := compile.Task{ID: id, Server: server, Address: netip.MustParseAddr(addr)}
		t.App, t.Class = "ledger", id[len("ledger/"):len(id)-2]
		return t
	}
	tasks = append(tasks, tk("ledger/api/0", "s1", "100.64.2.1"), tk("ledger/api/1", "s3", "100.64.2.2"), tk("ledger/admin/0", "s2", "100.64.2.3"))
	return apps, tasks
}

func crossNet(apps []spec.App, tasks []compile.Task) *fakeNet {
	f := newFakeNet(apps, tasks)
	f.cross = map[string]bool{"shop/app>ledger/api:7000": true, "shop/web>ledger/api:7000": false}
	return f
}

// verify of either app proves the link: the importing classes connect to
// every task of the exporting class on the exported port, encrypted or
// plain as each rule says; the importer's other class, the exporter's
// other port and class, and a port nothing names are denied.
func TestAcrossApps(t *testing.T) {
	apps, tasks := shopAndLedger()
	for _, app := range []string{"shop", "ledger"} {
		f := crossNet(apps, tasks)
		rep, err := Run(context.Background(), f, app, apps, tasks, Options{Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, c := range rep.Checks {
			if !c.OK {
				t.Errorf("%s: unexpected mismatch %+v", app, c)
			}
			if c.FromApp != "" {
				got[c.FromTask+">"+c.ToTask+":"+itoa(c.Port)+":"+c.Expect] = true
			}
		}
		if !rep.OK() {
			t.Fatalf("%s: report %d passed of %d", app, rep.Passed, len(rep.Checks))
		}
		for _, k := range []string{
			"shop/app/0>ledger/api/0:7000:encrypted", "shop/app/0>ledger/api/1:7000:local", "shop/app/1>ledger/api/1:7000:encrypted", "shop/app/1>ledger/api/0:7000:local",
			"shop/web/0>ledger/api/0:7000:local", "shop/web/0>ledger/api/1:7000:plain", "shop/web/1>ledger/api/1:7000:plain",
			"shop/app/0>ledger/api/0:7001:denied", "shop/app/0>ledger/api/0:9:denied", // not exported to it / named by nothing
			"shop/db/0>ledger/api/0:7000:denied", // the importer's other class
			"ledger/admin/0>ledger/api/1:7000:denied",
			"shop/app/0>ledger/admin/0:7000:denied", // the exporter's other class
		} {
			if !got[k] {
				t.Errorf("%s: no check %s", app, k)
			}
		}
	}
	// A hole across apps (the importer's db let through) and a leak (the
	// encrypted pair in plain) are caught from either side.
	for _, app := range []string{"shop", "ledger"} {
		f := crossNet(apps, tasks)
		f.cross["shop/db>ledger/api:7000"] = false
		f.leak[classPair("app", "api")] = true
		rep, err := Run(context.Background(), f, app, apps, tasks, Options{Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var hole, leak bool
		for _, c := range rep.Checks {
			hole = hole || (!c.OK && c.FromClass == "db" && c.ToClass == "api" && c.Expect == Denied)
			leak = leak || (!c.OK && c.FromClass == "app" && c.ToClass == "api" && c.Expect == Encrypted && c.Observed == Plain)
		}
		if !hole || !leak || rep.OK() {
			t.Errorf("%s: hole %t leak %t ok %t", app, hole, leak, rep.OK())
		}
	}
}

// Once the export is withdrawn, verify of the importer expects its rules'
// ports denied: a network that still lets them through fails.
func TestAcrossWithdrawn(t *testing.T) {
	apps, tasks := shopAndLedger()
	apps[2].Exports = slices.Clone(apps[2].Exports[1:])
	f := crossNet(apps, tasks) // still open: the data plane did not follow
	rep, err := Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, c := range rep.Checks {
		if !c.OK {
			if c.ToClass != "api" || c.Port != 7000 || c.Expect != Denied {
				t.Errorf("unexpected mismatch %+v", c)
			}
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("a path kept after the export was withdrawn passed verify")
	}
	f.cross = nil // the data plane followed: everything denied, and passes
	rep, err = Run(context.Background(), f, "shop", apps, tasks, Options{Timeout: time.Second})
	if err != nil || !rep.OK() {
		t.Fatalf("%v, %d failed", err, rep.Failed)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
