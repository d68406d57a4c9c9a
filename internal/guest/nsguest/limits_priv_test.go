package nsguest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
)

// The agent's half of the handshake: the task's CPU quota is back in the
// kernel before guest-init is told it may start the program, and when the
// quota cannot be set guest-init is not told at all. Red when setLimits
// answers before (or without) setting the quota.
func TestSetLimitsBeforeProgramStarts(t *testing.T) {
	e := newEnv(t, nil)
	g := e.guest("limits", "true")
	e.tasks = nil // no guest is made: only its cgroup, removed here
	g.Resources = spec.Resources{CPU: 5, Memory: 32 << 20}
	cg := e.r.cgroups.Named(e.cfg.CgroupParent, fmt.Sprintf("corlimits%d", os.Getpid()))
	t.Cleanup(func() { cg.Remove() })
	if err := cg.Ensure(g.Resources); err != nil {
		t.Fatal(err)
	}
	quota := func() string {
		if e.r.cgroups.Unified() {
			return readTrim(t, filepath.Join(cg.Dir(""), "cpu.max"))
		}
		return readTrim(t, filepath.Join(cg.Dir("cpu"), "cpu.cfs_quota_us"))
	}
	want, unlimited := "1000", "-1" // 5m is under the 1 ms floor
	if e.r.cgroups.Unified() {
		want, unlimited = "1000 100000", "max 100000"
	}
	if err := cg.Unthrottle(); err != nil {
		t.Fatal(err)
	}
	if q := quota(); q != unlimited {
		t.Fatalf("quota while sealing = %s, want %s", q, unlimited)
	}

	agent, init, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	go e.r.setLimits(g, cg, agent)
	if _, err := init.Write([]byte{sealedByte}); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if n, err := init.Read(b[:]); n != 1 || b[0] != limitedByte {
		t.Fatalf("the agent answered %q, %v; want the limited byte", b[:n], err)
	}
	init.Close()
	if q := quota(); q != want {
		t.Errorf("quota when the program may start = %s, want %s", q, want)
	}

	// A quota that cannot be written: no answer, the connection closes.
	if err := cg.Remove(); err != nil {
		t.Fatal(err)
	}
	agent, init, err = socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer init.Close()
	go e.r.setLimits(g, cg, agent)
	if _, err := init.Write([]byte{sealedByte}); err != nil {
		t.Fatal(err)
	}
	if n, err := init.Read(b[:]); n != 0 {
		t.Errorf("the agent answered %q (%v) though the quota was not set", b[:n], err)
	}
}
