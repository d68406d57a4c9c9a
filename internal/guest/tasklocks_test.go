package guest

import (
	"sync"
	"testing"
	"time"
)

func TestTaskLocksSerialiseOneTask(t *testing.T) {
	var l TaskLocks
	var mu sync.Mutex
	inside, most := 0, 0
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock := l.Lock("web-0")
			mu.Lock()
			inside++
			most = max(most, inside)
			mu.Unlock()
			time.Sleep(100 * time.Microsecond) // widen the window a second holder would fall in
			mu.Lock()
			inside--
			mu.Unlock()
			unlock()
		}()
	}
	wg.Wait()
	if most != 1 {
		t.Fatalf("%d holders of one task's lock at once, want 1", most)
	}
	if n := l.held(); n != 0 {
		t.Fatalf("%d entries left after every unlock, want 0", n)
	}
}

func TestTaskLocksOtherTasksRunAtOnce(t *testing.T) {
	var l TaskLocks
	unlockA := l.Lock("web-0")
	got := make(chan struct{})
	go func() {
		unlockB := l.Lock("web-1") // must not wait for web-0
		unlockB()
		close(got)
	}()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("web-1's lock waited for web-0's holder")
	}
	blocked := make(chan struct{})
	go func() {
		unlock := l.Lock("web-0")
		unlock()
		close(blocked)
	}()
	select {
	case <-blocked:
		t.Fatal("a second holder of web-0's lock got it while the first held it")
	case <-time.After(50 * time.Millisecond):
	}
	unlockA()
	<-blocked
	if n := l.held(); n != 0 {
		t.Fatalf("%d entries left, want 0", n)
	}
}
