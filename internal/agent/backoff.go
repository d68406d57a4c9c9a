package agent

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff is an exponential backoff with jitter: the n-th consecutive
// failure waits a random time in [d/2, d], d = min(Min*2^n, Max). The
// random half spreads a fleet of agents that lost the server at the same
// moment, so that they do not all come back in the same second; the fixed
// half keeps a single agent from spinning.
type backoff struct {
	Min, Max time.Duration
	failures int
	rand     func() float64 // in [0, 1); nil means math/rand
}

// next returns how long to wait after one more failure.
func (b *backoff) next() time.Duration {
	d := b.Min
	for i := 0; i < b.failures && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	b.failures++
	r := rand.Float64
	if b.rand != nil {
		r = b.rand
	}
	return d/2 + time.Duration(r()*float64(d/2))
}

// reset is called after a success.
func (b *backoff) reset() { b.failures = 0 }

// sleepCtx waits d or until ctx is done; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
