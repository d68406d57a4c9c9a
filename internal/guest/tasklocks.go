package guest

import "sync"

// TaskLocks serialises the operations on one task (a runtime's Ensure and
// Remove) and lets those on different tasks run at once. A runtime-wide
// lock made an app's removal sequential: each guest's end (SIGTERM, its
// grace, the cgroup emptied, the netns deleted) waited for the one before,
// 0.1 to 0.5 s each, minutes for an app of a thousand tasks.
//
// The zero value is ready to use.
type TaskLocks struct {
	mu sync.Mutex
	m  map[string]*taskLock
}

type taskLock struct {
	mu   sync.Mutex
	refs int // holders and waiters; the entry goes when it drops to 0
}

// Lock locks task's lock and returns its unlock.
func (l *TaskLocks) Lock(task string) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*taskLock{}
	}
	e := l.m[task]
	if e == nil {
		e = &taskLock{}
		l.m[task] = e
	}
	e.refs++
	l.mu.Unlock()

	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		l.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(l.m, task)
		}
		l.mu.Unlock()
	}
}

// held is how many tasks have a holder or a waiter (for tests).
func (l *TaskLocks) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
