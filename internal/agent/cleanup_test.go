package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
)

// slowGuests is a Guests whose Remove waits until released, counting
// the removals under way.
type slowGuests struct {
	release chan struct{}
	fail    map[string]bool

	mu           sync.Mutex
	inside, most int
	removed      []string
}

func (g *slowGuests) Ensure(context.Context, compile.Guest) error { return nil }
func (g *slowGuests) List(context.Context) ([]string, error)      { return nil, nil }
func (g *slowGuests) Status(task string) api.TaskStatus           { return api.TaskStatus{Task: task} }

func (g *slowGuests) Remove(_ context.Context, task string) error {
	g.mu.Lock()
	g.inside++
	g.most = max(g.most, g.inside)
	g.mu.Unlock()
	<-g.release
	g.mu.Lock()
	g.inside--
	g.removed = append(g.removed, task)
	g.mu.Unlock()
	if g.fail[task] {
		return errors.New("stuck")
	}
	return nil
}

func (g *slowGuests) state() (inside, most, removed int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inside, g.most, len(g.removed)
}

func TestRemoveGuestsAtOnceBoundedAndWaited(t *testing.T) {
	var tasks []string
	for i := range 20 {
		tasks = append(tasks, fmt.Sprintf("shop/web/%d", i))
	}
	g := &slowGuests{release: make(chan struct{}), fail: map[string]bool{tasks[3]: true, tasks[17]: true}}
	done := make(chan []error, 1)
	go func() {
		done <- removeGuests(context.Background(), g, tasks, "removing guest", slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	// removeParallel removals start together, and no more.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if inside, _, _ := g.state(); inside == removeParallel {
			break
		}
		if time.Now().After(deadline) {
			inside, _, _ := g.state()
			t.Fatalf("%d removals under way, want %d at once", inside, removeParallel)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("removeGuests returned with removals still under way")
	default:
	}
	close(g.release)
	errs := <-done
	if _, most, removed := g.state(); most != removeParallel || removed != len(tasks) {
		t.Fatalf("at most %d at once and %d removed, want %d and %d", most, removed, removeParallel, len(tasks))
	}
	if len(errs) != 2 || errs[0].Error() != "remove guest shop/web/3: stuck" || errs[1].Error() != "remove guest shop/web/17: stuck" {
		t.Fatalf("errors %v, want shop/web/3's then shop/web/17's", errs)
	}
}
