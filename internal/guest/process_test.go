package guest

import (
	"encoding/json"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestExitChildAndAdopted follows one process both as our child and as an
// adopted one (through its pidfd), stops it through the adopted watch and
// checks what each says about its end.
func TestExitChildAndAdopted(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	id := ProcIDOf(cmd.Process.Pid)
	if !id.Alive() || id.StartTime == 0 {
		t.Fatalf("fresh child %+v not alive", id)
	}
	adopted, err := WatchAdopted(id, "QEMU")
	if err != nil {
		t.Fatal(err)
	}
	child := WaitChild(cmd, "QEMU")
	if child.Gone() || adopted.Gone() {
		t.Fatal("gone before stopped")
	}
	termed := false
	adopted.Stop(5*time.Second,
		func() { termed = true; _ = syscall.Kill(id.PID, syscall.SIGTERM) },
		func() { t.Error("needed SIGKILL for sleep") })
	if !termed || !adopted.Gone() {
		t.Fatalf("after Stop: asked %v, gone %v", termed, adopted.Gone())
	}
	<-child.Done()
	if got, want := child.Status(), "QEMU killed by signal terminated"; got != want {
		t.Errorf("child status %q, want %q", got, want)
	}
	if got, want := adopted.Status(), "QEMU exited (status unknown: started by an earlier agent)"; got != want {
		t.Errorf("adopted status %q, want %q", got, want)
	}
	if id.Alive() {
		t.Error("reaped process still alive")
	}
	if _, err := WatchAdopted(id, ""); err == nil {
		t.Error("adopted a process that is gone")
	}
}

func TestExitChildStatusUnnamed(t *testing.T) {
	cmd := exec.Command("sh", "-c", "exit 3")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := WaitChild(cmd, "")
	<-e.Done()
	if got := e.Status(); got != "exited with status 3" {
		t.Errorf("status %q", got)
	}
}

// TestExitRelease stops watching an adopted process without touching it.
func TestExitRelease(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	e, err := WatchAdopted(ProcIDOf(cmd.Process.Pid), "")
	if err != nil {
		t.Fatal(err)
	}
	e.Release()
	e.Release()                        // twice is fine
	time.Sleep(600 * time.Millisecond) // longer than one poll round
	if e.Gone() || !ProcIDOf(cmd.Process.Pid).Alive() {
		t.Fatal("Release ended the watch as an exit or touched the process")
	}
}

// TestProcRecordJSON keeps the pidfile format that running agents wrote.
func TestProcRecordJSON(t *testing.T) {
	var rec ProcRecord
	in := `{"pid":42,"startTime":7,"hash":"h","started":"2026-01-02T03:04:05Z"}`
	if err := json.Unmarshal([]byte(in), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.PID != 42 || rec.StartTime != 7 || rec.Hash != "h" {
		t.Fatalf("decoded %+v", rec)
	}
	out, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != in {
		t.Fatalf("encoded %s, want %s", out, in)
	}
}
