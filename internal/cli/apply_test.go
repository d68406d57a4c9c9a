package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/server"
)

// startServer runs a real server on a loopback port, with its data in a
// temporary directory, until the test ends; it returns the server and
// that directory.
func startServer(t *testing.T) (*server.Server, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := server.New(server.Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, dir
}

// writeApp writes an app file to a temporary directory and returns its
// path: app name with webTasks web tasks and one db task (netns, sleep),
// web reaching db on 5432, encrypted.
func writeApp(t *testing.T, name string, webTasks int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "app.yaml")
	doc := fmt.Sprintf(`apiVersion: corridor/v1
kind: App
name: %s
classes:
  - name: web
    tasks: %d
    guest: {runtime: netns, command: [sleep, infinity]}
    resources: {cpu: 10m, memory: 4Mi}
  - name: db
    tasks: 1
    guest: {runtime: netns, command: [sleep, infinity]}
    resources: {cpu: 10m, memory: 4Mi}
rules:
  - {from: web, to: db, ports: [5432], encrypt: true}
`, name, webTasks)
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// serveFleet starts a real server with the named servers joined (as
// agents would), points the CLI at it with the admin token, and returns
// the admin client and the agents' clients by name.
func serveFleet(t *testing.T, names ...string) (*api.Client, map[string]*api.Client) {
	t.Helper()
	s, dir := startServer(t)
	tok, err := os.ReadFile(filepath.Join(dir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("CORRIDOR_CONFIG", filepath.Join(t.TempDir(), "config.json"))
	t.Setenv("CORRIDOR_SERVER", s.URL())
	t.Setenv("CORRIDOR_TOKEN", strings.TrimSpace(string(tok)))
	t.Setenv("CORRIDOR_CA", filepath.Join(dir, server.CACertFile))
	admin, err := (&clientFlags{}).client()
	if err != nil {
		t.Fatal(err)
	}
	agents := map[string]*api.Client{}
	for i, n := range names {
		agents[n] = joinServer(t, s, n)
		// joinServer gives every server one address: report its own.
		if err := agents[n].ReportStatus(context.Background(), n, api.Status{Name: n, Address: fmt.Sprintf("198.18.0.%d", 11+i)}); err != nil {
			t.Fatal(err)
		}
	}
	return admin, agents
}

// fakeAgents reports, for each server, what a working agent would after
// applying its desired state: the revision applied, its tasks running and
// a handshake with every peer of an encrypted path. It runs until ctx ends.
func fakeAgents(ctx context.Context, admin *api.Client, agents map[string]*api.Client) {
	for ctx.Err() == nil {
		servers, err1 := admin.ListServers(ctx)
		tasks, err2 := admin.ListTasks(ctx, api.Filter{})
		paths, err3 := admin.ListPaths(ctx, api.Filter{})
		if err := errors.Join(err1, err2, err3); err == nil {
			for _, s := range servers {
				name := s.Spec.Name
				st := api.Status{Name: name, AppliedRevision: s.DesiredRevision, Time: time.Now()}
				for _, ti := range tasks {
					if ti.Server == name {
						st.Tasks = append(st.Tasks, api.TaskStatus{Task: ti.ID, State: api.TaskRunning, Runtime: "netns", Since: time.Now()})
					}
				}
				for _, p := range paths {
					if p.FromServer == name && p.Encrypt && !p.Local {
						st.Peers = append(st.Peers, api.PeerStatus{Server: p.ToServer, LastHandshake: time.Now()})
					}
				}
				agents[name].ReportStatus(ctx, name, st) //nolint:errcheck // tried again next round
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// apply --wait gives up after --timeout with exit 1 and what is still
// unsettled while no agent works, and returns once agents apply their
// states, run the tasks and handshake.
func TestApplyWait(t *testing.T) {
	admin, agents := serveFleet(t, "s1", "s2")
	app := writeApp(t, "shop", 1)

	// Created first and placed by the controller before the timed wait, so
	// that the 1 s below times out on the agents alone (a loaded machine
	// may take longer than that to place, and the error would then say
	// "not placed yet" instead of naming the task's server).
	out, errOut, err := run(t, "apply", "-f", app)
	if err != nil || !strings.Contains(out, "shop") || !strings.Contains(out, "created") {
		t.Fatalf("apply: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ts, err := admin.ListTasks(context.Background(), api.Filter{App: "shop"})
		placed := err == nil && len(ts) == 2
		for _, ti := range ts {
			placed = placed && ti.Server != ""
		}
		if placed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shop not placed after 30 s: %v %v", ts, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, errOut, err = run(t, "apply", "-f", app, "--wait", "--timeout", "1s")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("apply --wait with no agent: %v (%T), want exit 1\nstderr:\n%s", err, err, errOut)
	}
	if !strings.Contains(out, "shop") || !strings.Contains(out, "unchanged") {
		t.Errorf("the apply result is not on stdout:\n%s", out)
	}
	if !strings.Contains(errOut, "waiting for shop to settle: 0/2 tasks running, 0/2 hosts applied their state") {
		t.Errorf("no progress line on stderr:\n%s", errOut)
	}
	for _, want := range []string{"shop did not settle within 1s", "task shop/web/0 on s", "no status reported yet", "server s1 (ready): applied revision 0 of"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("timeout error lacks %q:\n%v", want, err)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go fakeAgents(ctx, admin, agents)
	out, errOut, err = run(t, "apply", "-f", app, "--wait", "--timeout", "30s", "-o", "json")
	if err != nil {
		t.Fatalf("apply --wait with agents: %v\nstderr:\n%s", err, errOut)
	}
	if !strings.Contains(out, `"unchanged"`) || strings.Contains(out, "settle") {
		t.Errorf("stdout is not the apply result alone:\n%s", out)
	}
	if !strings.Contains(errOut, "shop settled in") || !strings.Contains(errOut, "2/2 tasks running, 2/2 hosts applied their state, 1/1 encrypted paths handshaken") {
		t.Errorf("stderr does not say the app settled, with its encrypted path:\n%s", errOut)
	}
	if _, _, err := run(t, "apply", "-f", app, "--timeout", "x"); err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("a bad --timeout: %v", err)
	}
}
