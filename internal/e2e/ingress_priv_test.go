package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/verify"
)

// TestIngressFromOutside (issue 15): an app publishes its web class on
// port 80 of every lab server for the lab's client network. From the
// lab's outside client, on every server, requests are answered by both
// web tasks (local, or by an encrypted leg that shows WireGuard and no
// plaintext on the backend host's underlay), and a client outside the
// network does not connect; after web is scaled down to one task, every
// server sends every request to the task that is left.
func TestIngressFromOutside(t *testing.T) {
	f := upFleet(t)
	if f.lab.OutsideClient == nil {
		t.Fatal("the lab has no outside client")
	}
	doc := fmt.Sprintf(`apiVersion: corridor/v1
kind: App
name: ingress
classes:
  - name: web
    tasks: 2
    guest:
      runtime: netns
      command: [corridor, sample, web, --listen, ":80", --app, "http://127.0.0.1:9"]
    resources: {cpu: 100m, memory: 64Mi}
    ports: [{port: 80}]
    publish:
      - port: 80
        from: [%s]
`, lab.ClientNetwork)
	name := f.applyOwn(t, []byte(doc))
	f.settle(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	state := func() ([]spec.App, []compile.Task, []spec.Server) {
		t.Helper()
		apps, err := f.c.ListApps(ctx)
		if err != nil {
			t.Fatal(err)
		}
		infos, err := f.c.ListTasks(ctx, api.Filter{App: name})
		if err != nil {
			t.Fatal(err)
		}
		srvs, err := f.c.ListServers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var specs []spec.App
		for _, a := range apps {
			specs = append(specs, a.Spec)
		}
		var tasks []compile.Task
		for _, i := range infos {
			tasks = append(tasks, i.Task)
		}
		var servers []spec.Server
		for _, s := range srvs {
			servers = append(servers, s.Spec)
		}
		return specs, tasks, servers
	}
	oc := lab.VerifyClient{Lab: f.lab}
	apps, tasks, servers := state()
	var checks []verify.Check
	// The published port is in every host's desired state once settled;
	// a web task's service may still be starting: poll, with a deadline.
	for deadline := time.Now().Add(60 * time.Second); ; {
		checks = verify.IngressChecks(ctx, oc, name, apps, tasks, servers, verify.Options{Timeout: 1500 * time.Millisecond})
		ok := len(checks) > 0
		for _, c := range checks {
			ok = ok && c.OK
		}
		if ok || time.Now().After(deadline) {
			break
		}
	}
	kinds := map[string]int{}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("%s -> %s %s: expected %s, observed %s (%s)", c.FromTask, c.ToAddr, c.ToTask, c.Expect, c.Observed, c.Detail)
		}
		kinds[c.Expect]++
	}
	// 3 entry hosts x 2 tasks: one local and one remote (encrypted) per
	// host whose server runs a web task, two remote on the other; and 3
	// denied.
	if len(servers) != 3 || kinds[verify.Denied] != 3 || kinds[verify.Local]+kinds[verify.Encrypted] != 6 || kinds[verify.Encrypted] < 3 {
		t.Fatalf("ingress checks by expectation %v over %d servers, want 6 answered (at least 3 by an encrypted leg) and 3 denied", kinds, len(servers))
	}

	// Scale down: the stopped task leaves every entry host's pool.
	if _, err := f.c.Scale(ctx, name, "web", 1); err != nil {
		t.Fatalf("scale: %v", err)
	}
	left := f.settle(t, 1)
	if len(left) != 1 {
		t.Fatalf("after scaling: tasks %v", left)
	}
	for _, s := range f.lab.Servers {
		to := netip.AddrPortFrom(s.Address, 80)
		for i := range 10 {
			r, err := f.lab.Request(ctx, lab.IngressRequest{From: f.lab.OutsideClient.Allowed, To: to, Path: "/healthz",
				Marker: []byte("corridor-e2e-ingress"), Timeout: 2 * time.Second})
			if err != nil || !r.Connected {
				t.Fatalf("request %d to %s after scaling: %v %+v", i, to, err, r)
			}
			if !strings.Contains(r.Body, `"`+left[0].ID+`"`) {
				t.Fatalf("request %d to %s after scaling was answered by %q; only %s is left", i, to, r.Body, left[0].ID)
			}
		}
	}
}
