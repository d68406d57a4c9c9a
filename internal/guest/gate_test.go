package guest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// gateProg is a program that is ready once its test says so.
type gateProg struct {
	ready atomic.Bool
	done  chan struct{}
	once  sync.Once
}

func (p *gateProg) Record() ProcRecord    { return ProcRecord{Started: time.Now()} }
func (p *gateProg) Done() <-chan struct{} { return p.done }
func (p *gateProg) Status() string        { return "ended" }
func (p *gateProg) End(time.Duration)     { p.Kill() }
func (p *gateProg) Kill()                 { p.once.Do(func() { close(p.done) }) }
func (p *gateProg) Release()              {}

// With a gate of 2, five supervisors never have more than two programs
// started and not yet ready; the others wait, saying so, their first
// attempt counted as made (the agent's reconcile does not wait on them),
// and start as earlier ones become ready, until all five run.
func TestGateBoundsStartingPrograms(t *testing.T) {
	gate := NewGate(2)
	var mu sync.Mutex
	var progs []*gateProg
	booting, most := 0, 0
	var sups []*Supervisor
	for i := range 5 {
		s := NewSupervisor(SupervisorConfig{
			Task: fmt.Sprintf("a/c/%d", i), Gate: gate,
			Policy:   Policy{BackoffMin: time.Millisecond, BackoffMax: time.Millisecond, Grace: time.Millisecond},
			WantHash: func() string { return "" },
			Start: func() (Program, error) {
				p := &gateProg{done: make(chan struct{})}
				mu.Lock()
				progs = append(progs, p)
				booting++
				most = max(most, booting)
				mu.Unlock()
				return p, nil
			},
			Ready: &Readiness{Every: time.Millisecond, Timeout: time.Minute, Check: func(p Program) bool {
				return p.(*gateProg).ready.Load()
			}},
		})
		sups = append(sups, s)
		go s.Run(nil)
		defer s.Stop()
	}
	for _, s := range sups {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := s.WaitFirst(ctx); err != nil {
			t.Fatalf("first attempt of %s: %v", s.cfg.Task, err)
		}
		cancel()
	}
	waiting := 0
	for _, s := range sups {
		if st := s.Status(); strings.HasPrefix(st.Message, "waiting to start") {
			waiting++
		}
	}
	if waiting != 3 {
		t.Errorf("%d supervisors say they wait to start, want 3", waiting)
	}
	// Make programs ready one by one, as they come.
	for made := 0; made < 5; {
		mu.Lock()
		ps := append([]*gateProg(nil), progs...)
		mu.Unlock()
		if len(ps) > made {
			mu.Lock()
			booting--
			mu.Unlock()
			ps[made].ready.Store(true)
			made++
			continue
		}
		time.Sleep(time.Millisecond)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range sups {
		for s.Status().State != api.TaskRunning {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %+v", s.cfg.Task, s.Status())
			}
			time.Sleep(time.Millisecond)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if most > 2 {
		t.Errorf("%d programs were starting at once, gate of 2", most)
	}
	if gate.Starting() != 0 {
		t.Errorf("%d slots still held with every program running", gate.Starting())
	}
}

// A supervisor stopped while it waits for a slot returns without
// starting anything.
func TestGateWaitStops(t *testing.T) {
	gate := NewGate(1)
	if !gate.acquire(nil, nil) {
		t.Fatal("an empty gate refused")
	}
	started := atomic.Bool{}
	s := NewSupervisor(SupervisorConfig{Task: "a/c/0", Gate: gate, WantHash: func() string { return "" },
		Start: func() (Program, error) { started.Store(true); return &gateProg{done: make(chan struct{})}, nil }})
	go s.Run(nil)
	for gate.Waiting() == 0 {
		time.Sleep(time.Millisecond)
	}
	s.Stop()
	if started.Load() || s.Status().State != api.TaskStopped {
		t.Fatalf("started %v, status %+v", started.Load(), s.Status())
	}
}
