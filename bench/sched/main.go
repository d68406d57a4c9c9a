// Command sched measures two things about the machine it runs on that
// decide how a compile's work splits across CPUs (bench/RESULTS.md,
// "Fourteenth session"): how long a goroutine handed to an idle CPU takes
// to start, and how much faster work runs on two goroutines than on one,
// with and without allocating.
//
//	go run ./bench/sched
package main

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"sync"
	"time"
)

func main() {
	wake()
	for _, alloc := range []bool{false, true} {
		for range 3 {
			split(alloc)
		}
	}
}

// spin keeps the calling goroutine busy for d.
func spin(d time.Duration) {
	for t := time.Now(); time.Since(t) < d; {
	}
}

// wake hands a goroutine over after 300 µs of serial work, which lets the
// other CPU go idle, 2,000 times, and prints when the goroutine started.
func wake() {
	lat := make([]time.Duration, 0, 2000)
	for range 2000 {
		spin(300 * time.Microsecond)
		var wg sync.WaitGroup
		t0 := time.Now()
		var t1 time.Time
		wg.Go(func() { t1 = time.Now(); spin(100 * time.Microsecond) })
		spin(150 * time.Microsecond)
		wg.Wait()
		lat = append(lat, t1.Sub(t0))
	}
	slices.Sort(lat)
	fmt.Printf("goroutine start on an idle CPU: p10 %v, p50 %v, p90 %v, p99 %v\n", lat[200], lat[1000], lat[1800], lat[1980])
}

// work hashes n times, allocating 512 bytes per hash when alloc is set.
// It returns the last allocation, so that every one is made on the heap.
func work(n int, alloc bool) (last []byte) {
	var b [64]byte
	for range n {
		h := sha256.Sum256(b[:])
		b[0] = h[0]
		if alloc {
			last = make([]byte, 512)
			last[0] = b[0]
		}
	}
	return last
}

// split times the same work on one goroutine and in halves on two.
func split(alloc bool) {
	t := time.Now()
	work(2_000_000, alloc)
	one := time.Since(t)
	t = time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { work(1_000_000, alloc) })
	work(1_000_000, alloc)
	wg.Wait()
	two := time.Since(t)
	fmt.Printf("allocating %-5v one goroutine %v, two %v: %.2f times as fast\n", alloc, one.Round(time.Millisecond), two.Round(time.Millisecond), float64(one)/float64(two))
}
