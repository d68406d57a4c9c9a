package server

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// ledgerYAML exports its api class's port 7000 as accounts when export is
// set.
func ledgerYAML(export bool) string {
	s := `apiVersion: corridor/v1
kind: App
name: ledger
classes:
  - name: api
    tasks: 1
    guest: {runtime: netns, command: [sleep, infinity]}
    resources: {cpu: 10m, memory: 4Mi}
`
	if export {
		s += "exports:\n  - {name: accounts, class: api, ports: [7000]}\n"
	}
	return s
}

// shopImports imports ledger/accounts and reaches it from web on ports.
func shopImports(ports string) string {
	return `apiVersion: corridor/v1
kind: App
name: shop
classes:
  - name: web
    tasks: 1
    guest: {runtime: netns, command: [sleep, infinity]}
    resources: {cpu: 10m, memory: 4Mi}
imports:
  - service: ledger/accounts
rules:
  - from: web
    to: accounts
    ports: [` + ports + `]
    encrypt: true
`
}

// refused applies body and wants a 422 whose details hold
// "file:line:col: field: ..." with msg, line being that of the first
// line of body holding at, and nothing stored under name.
func refused(t *testing.T, ts *testServer, body, at, field, msg, name string) {
	t.Helper()
	_, err := ts.admin.ApplyApp(bg, []byte(body), api.ApplyOptions{File: "shop.yaml"})
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnprocessableEntity {
		t.Fatalf("apply = %v, want 422", err)
	}
	line := 1 + strings.Count(body[:strings.Index(body, at)], "\n")
	prefix := fmt.Sprintf("shop.yaml:%d:", line)
	found := false
	for _, d := range se.Details {
		if strings.HasPrefix(d, prefix) && strings.Contains(d, " "+field+": ") && strings.Contains(d, msg) {
			found = true
		}
	}
	if !found {
		t.Fatalf("details %q: none starts %q naming %s with %q", se.Details, prefix, field, msg)
	}
	if _, err := ts.admin.GetApp(bg, name); api.HTTPStatus(err) != http.StatusNotFound {
		t.Fatalf("app %s stored after a refused apply: %v", name, err)
	}
}

func crossPathCount(t *testing.T, ts *testServer, app string) int {
	t.Helper()
	ps, err := ts.admin.ListPaths(bg, api.Filter{App: app})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range ps {
		if p.ToApp == "ledger" && p.App == "shop" {
			n++
		}
	}
	return n
}

// Both sides consent, checked when the importer is applied; the exporter
// may withdraw later, which leaves the importer's rules unresolved (said
// in the app's view and in the event) and removes the paths.
func TestAppToAppConsent(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ts.join(t, "s1", 0, nil)
	ts.join(t, "s2", 1, nil)

	refused(t, ts, shopImports("7000"), "service: ledger/accounts", "imports[0].service", `no app "ledger"`, "shop")
	if _, err := ts.admin.ApplyApp(bg, []byte(ledgerYAML(false)), api.ApplyOptions{File: "ledger.yaml"}); err != nil {
		t.Fatal(err)
	}
	refused(t, ts, shopImports("7000"), "service: ledger/accounts", "imports[0].service", `does not export a service "accounts"`, "shop")
	if _, err := ts.admin.ApplyApp(bg, []byte(ledgerYAML(true)), api.ApplyOptions{File: "ledger.yaml"}); err != nil {
		t.Fatal(err)
	}
	refused(t, ts, shopImports("7000, 7001"), "ports: [7000, 7001]", "rules[0].ports[1]", "port 7001 is not exported by service ledger/accounts", "shop")
	// The plan endpoint refuses alike.
	if _, err := ts.admin.Plan(bg, []byte(shopImports("7001")), api.ApplyOptions{File: "shop.yaml"}); api.HTTPStatus(err) != http.StatusUnprocessableEntity {
		t.Fatalf("plan with an unexported port: %v, want 422", err)
	}

	if _, err := ts.admin.ApplyApp(bg, []byte(shopImports("7000")), api.ApplyOptions{File: "shop.yaml"}); err != nil {
		t.Fatalf("apply of a resolved import: %v", err)
	}
	eventually(t, 10*time.Second, "the path across apps", func() (bool, string) {
		n := crossPathCount(t, ts, "ledger") // listed with the exporter's paths too
		return n == 1, fmt.Sprint(n)
	})
	if a, err := ts.admin.GetApp(bg, "shop"); err != nil || len(a.Unresolved) != 0 {
		t.Fatalf("shop resolved: %+v, %v", a.Unresolved, err)
	}

	// The exporter withdraws: allowed, noted, and the path goes.
	if _, err := ts.admin.ApplyApp(bg, []byte(ledgerYAML(false)), api.ApplyOptions{File: "ledger.yaml"}); err != nil {
		t.Fatalf("withdrawing an export: %v", err)
	}
	eventually(t, 10*time.Second, "no path across apps", func() (bool, string) {
		n := crossPathCount(t, ts, "shop")
		return n == 0, fmt.Sprint(n)
	})
	a, err := ts.admin.GetApp(bg, "shop")
	if err != nil || len(a.Unresolved) != 1 || !strings.HasPrefix(a.Unresolved[0], "imports[0].service: ") {
		t.Fatalf("shop after the export is withdrawn: %q, %v", a.Unresolved, err)
	}
	// Given again, then the exporter deleted.
	if _, err := ts.admin.ApplyApp(bg, []byte(ledgerYAML(true)), api.ApplyOptions{File: "ledger.yaml"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the path across apps again", func() (bool, string) {
		n := crossPathCount(t, ts, "shop")
		return n == 1, fmt.Sprint(n)
	})
	if err := ts.admin.DeleteApp(bg, "ledger"); err != nil {
		t.Fatalf("deleting an exporter: %v", err)
	}
	eventually(t, 10*time.Second, "no path after the exporter is deleted", func() (bool, string) {
		n := crossPathCount(t, ts, "shop")
		return n == 0, fmt.Sprint(n)
	})
	if a, err := ts.admin.GetApp(bg, "shop"); err != nil || len(a.Unresolved) != 1 || !strings.Contains(a.Unresolved[0], `no app "ledger"`) {
		t.Fatalf("shop after ledger is deleted: %q, %v", a.Unresolved, err)
	}
	evs, err := ts.admin.ListEvents(bg, 0)
	if err != nil {
		t.Fatal(err)
	}
	var withdrawn, deleted bool
	for _, e := range evs {
		withdrawn = withdrawn || (e.Action == "app.apply" && strings.Contains(e.Message, "app shop now unresolved (no paths): imports[0].service"))
		deleted = deleted || (e.Action == "app.delete" && strings.Contains(e.Message, `app shop now unresolved (no paths): imports[0].service: no app "ledger"`))
	}
	if !withdrawn || !deleted {
		t.Fatalf("events do not say shop became unresolved (withdrawn %t, deleted %t): %+v", withdrawn, deleted, evs)
	}
}
