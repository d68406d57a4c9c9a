package dataplane

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestKeyRotation rotates host A's key while a1 keeps trying to reach b1
// on their encrypted path: the path is down until B holds A's new key,
// nothing leaves A in plain meanwhile, and it comes back once B's state
// names the new key. The new key is on disk, the old one gone, and a
// restarted data plane comes back with the new key.
func TestKeyRotation(t *testing.T) {
	s := newScenario(t)
	s.apply(t)
	driveHandshakes(t, s, 3*time.Second)
	s.mustConnect(t, s.a1, s.b1, portDB, true)

	leaks := leakCounter(t, s.a)
	// Positive control: the counter sees a plain packet leave by A's
	// default route before it is trusted to see none.
	leakControl(t, s.a, leaks, s.b1.addr)
	before := s.quietLeaks(t, leaks)
	vxBefore, _ := s.a.stats(t, VXLANName)
	oldPub, oldFile := s.a.dp.PublicKey(), readFile(t, filepath.Join(s.a.stateDir, KeyFile))

	// a1 tries to reach b1 all along.
	var stop atomic.Bool
	var tries, ok atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			tries.Add(1)
			if c, err := dial(t, s.a1, s.b1, portDB, 300*time.Millisecond); err == nil {
				if exchange(c, "corridor-rotation-marker") == nil {
					ok.Add(1)
				}
				c.Close()
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	defer func() { stop.Store(true); wg.Wait() }()

	if err := s.a.dp.RotateKey(1); err != nil {
		t.Fatal(err)
	}
	newPub, gen := s.a.dp.Key()
	if newPub == oldPub || gen != 1 {
		t.Fatalf("after RotateKey(1): key %s (was %s), generation %d", newPub, oldPub, gen)
	}
	dev, err := s.a.dp.wg.Device(s.a.wgName)
	if err != nil {
		t.Fatal(err)
	}
	if dev.PublicKey != newPub || len(dev.Peers) != 1 {
		t.Fatalf("device holds key %s and %d peers; want %s and its one peer", dev.PublicKey, len(dev.Peers), newPub)
	}
	file := readFile(t, filepath.Join(s.a.stateDir, KeyFile))
	if file == oldFile || strings.TrimSpace(file) != s.a.dp.key.String() {
		t.Fatal("the key file does not hold the new key")
	}
	if fi, err := os.Stat(filepath.Join(s.a.stateDir, KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	if g := strings.TrimSpace(readFile(t, filepath.Join(s.a.stateDir, KeyGenerationFile))); g != "1" {
		t.Fatalf("generation file holds %q", g)
	}

	// B does not know the new key yet: the path is down, not plain.
	time.Sleep(time.Second)
	s.mustNotConnect(t, s.a1, s.b1, portDB)

	// B's next state names A's new key (as the server hands it out).
	rotated := time.Now()
	s.apply(t)
	driveHandshakes(t, s, 5*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	okAt := ok.Load()
	for ok.Load() == okAt && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if ok.Load() == okAt {
		t.Fatal("the encrypted path did not come back after B learnt A's new key")
	}
	t.Logf("path back %s after B's new state; %d of %d attempts got through over the whole test",
		time.Since(rotated).Round(time.Millisecond), ok.Load(), tries.Load())
	stop.Store(true)
	wg.Wait()

	if after := leaks(); after != before {
		t.Fatalf("plain packets left the underlay during the rotation: before %q after %q", before, after)
	}
	if vxAfter, _ := s.a.stats(t, VXLANName); vxAfter != vxBefore {
		t.Fatalf("%s sent %d packets during the rotation", VXLANName, vxAfter-vxBefore)
	}
	s.mustConnect(t, s.a1, s.b1, portDB, true)

	// The same or an older generation changes nothing.
	for _, g := range []int64{0, 1} {
		if err := s.a.dp.RotateKey(g); err != nil || s.a.dp.PublicKey() != newPub {
			t.Fatalf("RotateKey(%d) again: %v, key %s", g, err, s.a.dp.PublicKey())
		}
	}

	// A restarted data plane has the new key and generation, and the
	// path still works: nothing to put back.
	s.a.dp.Close()
	s.a.open(t)
	if k, gen := s.a.dp.Key(); k != newPub || gen != 1 {
		t.Fatalf("after a restart: key %s generation %d; want %s and 1", k, gen, newPub)
	}
	stA, _ := s.states()
	if err := s.a.dp.Apply(context.Background(), stA); err != nil {
		t.Fatal(err)
	}
	s.mustConnect(t, s.a1, s.b1, portDB, true)
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
