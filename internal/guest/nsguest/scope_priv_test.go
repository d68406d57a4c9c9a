package nsguest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/hostns"
)

// Two agents on one machine (two lab servers) under different scopes hold
// one task at once: each copy has its own network namespace and cgroup,
// under the same cgroup parent, and removing one leaves the other running.
func TestTwoScopesHoldOneTask(t *testing.T) {
	a := newEnv(t, func(c *Config) { c.Scope = "cortst-a" })
	b := newEnv(t, func(c *Config) { c.Scope = "cortst-b"; c.CgroupParent = a.cfg.CgroupParent })
	g := a.guest("both", "sh", "-c", `exec sleep 1000`)
	b.tasks = append(b.tasks, g.Task)
	a.ensure(g)
	pa := a.runningPID(a.r, g.Task)
	b.ensure(g)
	pb := b.runningPID(b.r, g.Task)

	na, nb := a.r.NetnsPath(g.Task), b.r.NetnsPath(g.Task)
	if na == nb {
		t.Fatalf("both copies in %s", na)
	}
	if want := hostns.Path(guest.NetnsNameIn("cortst-a", g.Task)); na != want {
		t.Errorf("netns of a's copy: %s, want %s", na, want)
	}
	for _, p := range []string{na, nb} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("netns %s: %v", p, err)
		}
	}
	if gone(pa) {
		t.Fatal("a's copy died when b made its own")
	}
	if inode(t, na) == inode(t, nb) {
		t.Error("both copies in one network namespace")
	}
	ca, cb := a.r.cgroup(g.Task).Procs(), b.r.cgroup(g.Task).Procs()
	if len(ca) == 0 || len(cb) == 0 || ca[0] == cb[0] {
		t.Errorf("cgroups: a holds %v, b holds %v", ca, cb)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.r.Remove(ctx, g.Task); err != nil {
		t.Fatal(err)
	}
	if !gone(pa) {
		t.Error("a's copy still runs after its removal")
	}
	if _, err := os.Lstat(na); !os.IsNotExist(err) {
		t.Errorf("a's netns left: %v", err)
	}
	if gone(pb) || b.runningPID(b.r, g.Task) != pb {
		t.Error("b's copy was stopped by a's removal")
	}
	if _, err := os.Stat(nb); err != nil {
		t.Errorf("b's netns went with a's removal: %v", err)
	}
}

// An agent upgraded to scoped names (or given another scope) adopts the
// guests it made before under the names they were made with: same
// program, same namespace, nothing restarted; only new guests get scoped
// names; Remove then removes the old names.
func TestScopeAdoptsOldNames(t *testing.T) {
	e := newEnv(t, nil) // no scope: the names of agents before scopes
	old := e.guest("old", "sh", "-c", `exec sleep 1000`)
	e.ensure(old)
	pid := e.runningPID(e.r, old.Task)
	oldNS := hostns.Path(guest.NetnsPrefix + guest.Name(old.Task))
	if got := e.r.NetnsPath(old.Task); got != oldNS {
		t.Fatalf("unscoped runtime names %s, want %s", got, oldNS)
	}
	oldInode := inode(t, oldNS)

	e.r.Close()
	e.cfg.Scope = "cortst-s1"
	e.r = e.newRuntime()

	list, err := e.r.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Netns != filepath.Base(oldNS) || len(list[0].Missing) != 0 || list[0].PID != pid {
		t.Fatalf("List after the upgrade = %+v, want %s in %s with pid %d", list, old.Task, oldNS, pid)
	}
	e.ensure(old)
	if got := e.runningPID(e.r, old.Task); got != pid {
		t.Fatalf("Ensure after the upgrade: pid %d, want the adopted %d", got, pid)
	}
	if got := e.r.NetnsPath(old.Task); got != oldNS || inode(t, oldNS) != oldInode {
		t.Errorf("after the upgrade the guest is in %s, want its old %s", got, oldNS)
	}
	if _, err := os.Stat(hostns.Path(guest.NetnsNameIn("cortst-s1", old.Task))); !os.IsNotExist(err) {
		t.Errorf("a scoped namespace was made for the adopted guest: %v", err)
	}

	fresh := e.guest("new", "sh", "-c", `exec sleep 1000`)
	e.ensure(fresh)
	if got, want := e.r.NetnsPath(fresh.Task), hostns.Path(guest.NetnsNameIn("cortst-s1", fresh.Task)); got != want {
		t.Errorf("a new guest is in %s, want %s", got, want)
	}
	if _, err := os.Stat(e.r.NetnsPath(fresh.Task)); err != nil {
		t.Error(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.r.Remove(ctx, old.Task); err != nil {
		t.Fatal(err)
	}
	e.tasks = e.tasks[1:]
	checkGone(t, e, old, pid)
	for _, d := range e.r.cgroups.Named(e.cfg.CgroupParent, guest.Name(old.Task)).Dirs() {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("the adopted guest's cgroup %s is still there", d)
		}
	}
}
