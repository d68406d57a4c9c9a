package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/probe"
	"github.com/corridor-dev/corridor/internal/verify"
)

// ledgerDoc is an app whose api class serves tcp/7000, exported as
// service accounts when export is set. Its admin class serves 7000 too,
// and is never exported.
func ledgerDoc(export bool) string {
	s := `apiVersion: corridor/v1
kind: App
name: ledger
classes:
  - name: api
    tasks: 2
    guest:
      runtime: netns
      command: [corridor, sample, db, --listen, ":7000"]
    resources: {cpu: 100m, memory: 64Mi}
    ports: [{port: 7000}]
  - name: admin
    tasks: 1
    guest:
      runtime: netns
      command: [corridor, sample, db, --listen, ":7000"]
    resources: {cpu: 100m, memory: 64Mi}
    ports: [{port: 7000}]
`
	if export {
		s += "exports:\n  - name: accounts\n    class: api\n    ports: [7000]\n"
	}
	return s
}

// storeDoc imports ledger's accounts as books: front reaches it
// encrypted, back in plain, idle not at all.
func storeDoc(ledger string) string {
	return fmt.Sprintf(`apiVersion: corridor/v1
kind: App
name: store
classes:
  - name: front
    tasks: 2
    guest:
      runtime: netns
      command: [corridor, sample, db, --listen, ":80"]
    resources: {cpu: 100m, memory: 64Mi}
    ports: [{port: 80}]
  - name: back
    tasks: 1
    guest:
      runtime: netns
      command: [corridor, sample, db, --listen, ":80"]
    resources: {cpu: 100m, memory: 64Mi}
    ports: [{port: 80}]
  - name: idle
    tasks: 1
    guest:
      runtime: netns
      command: [corridor, sample, db, --listen, ":80"]
    resources: {cpu: 100m, memory: 64Mi}
imports:
  - service: %s/accounts
    as: books
rules:
  - from: front
    to: books
    ports: [7000]
    encrypt: true
  - from: back
    to: books
    ports: [7000]
    encrypt: false
`, ledger)
}

// TestAppToApp (issue 15): two apps talk only through a service one
// exports and the other imports. The import is refused while the export
// is missing; once both consent verify proves the link from both sides
// (encrypted from front, plain from back, idle and ledger's admin
// denied); withdrawing the export, then deleting the exporter, remove the
// path: a direct probe that connected before times out after.
func TestAppToApp(t *testing.T) {
	f := upFleet(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	ledger := f.applyOwn(t, []byte(ledgerDoc(false)))
	store := "store" + strings.TrimPrefix(ledger, "ledger") // store<pid>, as applyOwn names
	doc := strings.Replace(storeDoc(ledger), "name: store", "name: "+store, 1)
	// Consent on both sides: the export is missing, so the import is
	// refused, with its place in the file.
	_, err := f.c.ApplyApp(ctx, []byte(doc), api.ApplyOptions{File: "store.yaml"})
	var se *api.StatusError
	line := 1 + strings.Count(doc[:strings.Index(doc, "service:")], "\n")
	if !errors.As(err, &se) || se.Code != http.StatusUnprocessableEntity || len(se.Details) != 1 ||
		!strings.HasPrefix(se.Details[0], fmt.Sprintf("store.yaml:%d:5: imports[0].service: app %s does not export", line, ledger)) {
		t.Fatalf("import of a service not exported: %v (details %q)", err, detailsOf(se))
	}
	f.apply(t, []byte(strings.Replace(ledgerDoc(true), "name: ledger", "name: "+ledger, 1)))
	f.apply(t, []byte(doc))
	tasks := f.settle(t, 7)

	rep := f.verifyWithin(t, store, 20*time.Second)
	kinds := map[string]int{}
	for _, c := range rep.Checks {
		if c.ToClass == "api" || c.ToClass == "admin" {
			kinds[c.FromClass+">"+c.ToClass+":"+c.Expect]++
		}
	}
	// 2 front x 2 api on 7000, encrypted or local; 1 back x 2 api plain
	// or local; idle denied; admin (not exported) denied.
	if kinds["front>api:"+verify.Encrypted]+kinds["front>api:"+verify.Local] != 2*2 ||
		kinds["back>api:"+verify.Plain]+kinds["back>api:"+verify.Local] != 2 ||
		kinds["idle>api:"+verify.Denied] == 0 || kinds["front>admin:"+verify.Denied] == 0 {
		t.Fatalf("verify %s's checks across apps: %v", store, kinds)
	}
	if kinds["front>api:"+verify.Encrypted] == 0 || kinds["back>api:"+verify.Plain] == 0 {
		t.Logf("placement %v: a pair across servers is missing for one kind (%v)", placement(tasks), kinds)
	}
	f.verifyWithin(t, ledger, 20*time.Second)

	// A front task and an api task on different servers, if any; else any.
	var from, to api.TaskInfo
	for _, a := range tasks {
		for _, b := range tasks {
			if a.App == store && a.Class == "front" && b.App == ledger && b.Class == "api" && (from.ID == "" || a.Server != b.Server) {
				from, to = a, b
			}
		}
	}
	addr := netip.AddrPortFrom(to.Address, 7000).String()
	waitConnected(t, f.lab.GuestNetns(from.ID), addr, 20*time.Second, 200*time.Millisecond, "while both consent")

	// The exporter withdraws: the path goes (probe times out), the
	// importer is marked unresolved, and verify of the importer, which
	// now expects its rule's port denied, passes.
	f.apply(t, []byte(strings.Replace(ledgerDoc(false), "name: ledger", "name: "+ledger, 1)))
	waitDenied(t, f.lab.GuestNetns(from.ID), addr, 30*time.Second, "after the export was withdrawn")
	app, err := f.c.GetApp(ctx, store)
	if err != nil || len(app.Unresolved) != 1 || !strings.Contains(app.Unresolved[0], "does not export") {
		t.Fatalf("%s after the export was withdrawn: unresolved %q, %v", store, app.Unresolved, err)
	}
	f.verifyWithin(t, store, 20*time.Second)

	// Given again, then the exporter deleted.
	f.apply(t, []byte(strings.Replace(ledgerDoc(true), "name: ledger", "name: "+ledger, 1)))
	waitConnected(t, f.lab.GuestNetns(from.ID), addr, 30*time.Second, 200*time.Millisecond, "after the export was given again")
	if err := f.c.DeleteApp(ctx, ledger); err != nil {
		t.Fatal(err)
	}
	f.settle(t, 4)
	if app, err := f.c.GetApp(ctx, store); err != nil || len(app.Unresolved) != 1 || !strings.Contains(app.Unresolved[0], "no app") {
		t.Fatalf("%s after %s was deleted: unresolved %q, %v", store, ledger, app.Unresolved, err)
	}
	// The importer's own paths are untouched: verify still passes.
	f.verifyWithin(t, store, 20*time.Second)
}

func detailsOf(se *api.StatusError) []string {
	if se == nil {
		return nil
	}
	return se.Details
}

// waitDenied dials addr from inside the guest network namespace fromNS
// until a dial times out (the firewall drops it), and fails the test if
// none does within d. A positive control comes first in the callers
// (waitConnected).
func waitDenied(t *testing.T, fromNS, addr string, d time.Duration, when string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		res, err := probe.Dial(ctx, fromNS, "tcp", addr, []byte("PING\n"), 1500*time.Millisecond)
		cancel()
		if err == nil && res.Outcome == probe.Timeout {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s -> %s still reachable %s after %s: %+v %v", filepath.Base(fromNS), addr, when, d, res, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
