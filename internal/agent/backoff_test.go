package agent

import (
	"testing"
	"time"
)

func TestBackoffGrowsWithJitterAndResets(t *testing.T) {
	r := 0.0
	b := backoff{Min: 100 * time.Millisecond, Max: time.Second, rand: func() float64 { return r }}
	// With no randomness each wait is half of 100, 200, 400, 800, 1000, 1000 ms.
	want := []time.Duration{50, 100, 200, 400, 500, 500}
	for i, w := range want {
		if got := b.next(); got != w*time.Millisecond {
			t.Fatalf("wait %d = %v, want %v", i, got, w*time.Millisecond)
		}
	}
	b.reset()
	r = 0.999999
	if got := b.next(); got < 99*time.Millisecond || got > 100*time.Millisecond {
		t.Fatalf("after reset with full jitter: %v, want just under 100ms", got)
	}
	// Real randomness stays within [d/2, d].
	b = backoff{Min: 100 * time.Millisecond, Max: time.Second}
	for range 3 {
		b.next()
	}
	for range 100 {
		b.failures = 3
		if got := b.next(); got < 400*time.Millisecond || got > 800*time.Millisecond {
			t.Fatalf("wait %v outside [400ms, 800ms]", got)
		}
	}
}
