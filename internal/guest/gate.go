package guest

import "sync/atomic"

// Gate bounds how many programs of one agent start at once: a program
// holds a slot from its start until it is ready (or ends). Without it, an
// app of hundreds of tasks placed on one host started them all together:
// on a small machine none became ready within its readiness timeout, each
// was killed and started again, and the host never settled (seen with
// 333 guests per host on two cores). With it, programs wait their turn,
// and each one's readiness timeout counts from its own start.
type Gate struct {
	slots   chan struct{}
	waiting atomic.Int64
}

// NewGate lets n programs start at once; n < 1 means no bound (nil).
func NewGate(n int) *Gate {
	if n < 1 {
		return nil
	}
	return &Gate{slots: make(chan struct{}, n)}
}

// Size is how many programs may start at once (0: no bound).
func (g *Gate) Size() int {
	if g == nil {
		return 0
	}
	return cap(g.slots)
}

// Starting is how many programs hold a slot now.
func (g *Gate) Starting() int {
	if g == nil {
		return 0
	}
	return len(g.slots)
}

// Waiting is how many programs wait for a slot.
func (g *Gate) Waiting() int {
	if g == nil {
		return 0
	}
	return int(g.waiting.Load())
}

// acquire waits for a slot; it returns false, without one, when stop or
// detach is closed first (a nil channel never is). A nil Gate always has
// room.
func (g *Gate) acquire(stop, detach <-chan struct{}) bool {
	if g == nil {
		return true
	}
	select {
	case g.slots <- struct{}{}:
		return true
	default:
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	select {
	case g.slots <- struct{}{}:
		return true
	case <-stop:
	case <-detach:
	}
	return false
}

func (g *Gate) release() {
	if g != nil {
		<-g.slots
	}
}

// slot is one supervisor's hold on a Gate slot, released once.
type slot struct {
	g    *Gate
	held bool
}

func (s *slot) release() {
	if s.held {
		s.held = false
		s.g.release()
	}
}
