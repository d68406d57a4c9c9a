package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// A server whose agent reports that its data plane failed (a second agent
// on the machine whose WireGuard device name clashes) is listed not-ready,
// with the error that says what to do; once it reports ready again, ready.
func TestServerWithFailedDataplaneIsNotReady(t *testing.T) {
	_, agents := serveFleet(t, "s1", "s2")
	ctx := context.Background()
	why := "data plane failed, tasks cannot run here: open UAPI socket for corw0: unix socket in use: give each agent on one machine its own --wg-name"
	report := func(notReady string) {
		t.Helper()
		st := api.Status{Name: "s2", Address: "198.18.0.12", NotReady: notReady, Time: time.Now()}
		if notReady != "" {
			st.Errors = []string{"data plane: open UAPI socket for corw0: unix socket in use"}
		}
		if err := agents["s2"].ReportStatus(ctx, "s2", st); err != nil {
			t.Fatal(err)
		}
	}
	states := func() map[string]api.Server {
		t.Helper()
		out, _, err := run(t, "get", "servers", "-o", "json")
		var servers []api.Server
		if err != nil || json.Unmarshal([]byte(out), &servers) != nil {
			t.Fatalf("get servers -o json: %v\n%s", err, out)
		}
		m := map[string]api.Server{}
		for _, s := range servers {
			m[s.Spec.Name] = s
		}
		return m
	}
	report(why)
	eventually(t, "s2 not-ready", func() bool { return states()["s2"].State == api.ServerNotReady })
	if s := states(); s["s1"].State != "ready" || len(s["s2"].Errors) == 0 || !strings.Contains(strings.Join(s["s2"].Errors, "\n"), "UAPI") {
		t.Fatalf("states: s1 %s, s2 %s %q; want s1 ready, s2 with its error", s["s1"].State, s["s2"].State, s["s2"].Errors)
	}
	out, _, err := run(t, "get", "servers")
	if err != nil || !strings.Contains(out, api.ServerNotReady) {
		t.Fatalf("get servers: %v\n%s", err, out)
	}
	if _, _, err := run(t, "get", "servers", "--wait-ready", "2", "--timeout", "300ms"); err == nil {
		t.Error("get servers --wait-ready 2 succeeded with s2 not ready")
	}
	report("")
	eventually(t, "s2 ready again", func() bool { return states()["s2"].State == "ready" })
}

// eventually waits up to 10s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
