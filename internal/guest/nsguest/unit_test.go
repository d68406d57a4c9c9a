package nsguest

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/spec"
)

func TestProgramEnvAndHash(t *testing.T) {
	r := &Runtime{cfg: Config{Binary: "/opt/corridor/bin/corridor"}}
	g := compile.Guest{Task: "shop/web/0", Spec: spec.Guest{Command: []string{"corridor", "echo", "--port", "80"}},
		Env: map[string]string{"CORRIDOR_TASK": "shop/web/0", "HOME": "/srv"}}
	if got := r.command(g); got[0] != "/opt/corridor/bin/corridor" || got[1] != "echo" {
		t.Errorf("command = %v", got)
	}
	if g.Spec.Command[0] != "corridor" {
		t.Error("command() modified the guest's spec")
	}
	env := strings.Join(programEnv(g, "/state/data"), " ")
	if env != "CORRIDOR_DATA_DIR=/state/data CORRIDOR_TASK=shop/web/0 HOME=/srv PATH="+guest.DefaultPath {
		t.Errorf("env = %s", env)
	}
	h1 := r.programHash(g)
	g2 := g
	g2.Env = map[string]string{"CORRIDOR_TASK": "shop/web/0", "HOME": "/srv", "CORRIDOR_PEERS_DB": "100.64.0.3"}
	if h1 == r.programHash(g2) {
		t.Error("hash ignores an env change")
	}
	g3 := g
	g3.Resources = spec.Resources{CPU: 100}
	if h1 != r.programHash(g3) {
		t.Error("hash changes with resources, which must not restart the program")
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "prog")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := lookPath("prog", "/nonexistent:"+dir); err != nil || p != exe {
		t.Errorf("lookPath(prog) = %q, %v", p, err)
	}
	if _, err := lookPath("data", dir); err == nil {
		t.Error("non-executable file found")
	}
	if _, err := lookPath("prog", "/nonexistent"); err == nil || !strings.Contains(err.Error(), "not found in PATH") {
		t.Errorf("missing program: %v", err)
	}
	if p, err := lookPath(exe, ""); err != nil || p != exe {
		t.Errorf("absolute: %q, %v", p, err)
	}
}

func TestValidate(t *testing.T) {
	ok := compile.Guest{Task: "a/b/0", Address: netip.MustParseAddr("100.64.0.2"), HostIf: "corg0123abcd",
		Spec: spec.Guest{Command: []string{"sleep", "1"}}}
	if err := validate(ok); err != nil {
		t.Fatal(err)
	}
	bad := ok
	bad.Address = netip.Addr{}
	bad.HostIf = "this-name-is-too-long"
	bad.Spec.Command = nil
	err := validate(bad)
	for _, field := range []string{"address", "hostIf", "spec.command"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("error %v does not name %s", err, field)
		}
	}
}

// waitFor polls cond every 20 ms until it holds, failing t after timeout.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
	}
}
