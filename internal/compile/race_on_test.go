//go:build race

package compile

// raceDetector: this test binary runs under the race detector, which
// makes the compiler 10 to 20 times slower. The tests on large fleets
// then use smaller ones that still exercise the same code (several host
// builders, cached and rebuilt hosts): see fleetCacheTest.
const raceDetector = true
