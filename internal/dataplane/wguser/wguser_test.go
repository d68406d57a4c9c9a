package wguser

import (
	"runtime"
	"testing"
)

func TestDefaultProcs(t *testing.T) {
	for cpus, want := range map[int]int{1: 1, 2: 1, 3: 1, 4: 2, 16: 8} {
		if got := DefaultProcs(cpus); got != want {
			t.Errorf("DefaultProcs(%d) = %d, want %d", cpus, got, want)
		}
	}
}

func TestSetProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	t.Setenv("GOMAXPROCS", "")
	runtime.GOMAXPROCS(4)
	if cpus, got := SetProcs(0); cpus != 4 || got != 2 || runtime.GOMAXPROCS(0) != 2 {
		t.Fatalf("SetProcs(0) with 4 = (%d, %d), GOMAXPROCS %d; want (4, 2), 2", cpus, got, runtime.GOMAXPROCS(0))
	}
	if _, got := SetProcs(3); got != 3 || runtime.GOMAXPROCS(0) != 3 {
		t.Fatalf("SetProcs(3) = %d, GOMAXPROCS %d; want 3", got, runtime.GOMAXPROCS(0))
	}
	// GOMAXPROCS in the environment: the runtime took it at start; keep it.
	t.Setenv("GOMAXPROCS", "3")
	if _, got := SetProcs(0); got != 3 {
		t.Fatalf("SetProcs(0) with GOMAXPROCS=3 in the environment = %d, want 3", got)
	}
}
