//go:build !race

package compile

// raceDetector: see race_on_test.go.
const raceDetector = false
