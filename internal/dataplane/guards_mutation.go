//go:build corridor_mutation

package dataplane

import (
	"fmt"
	"os"
	"slices"
	"testing"
)

// mutated is the one guard this test build leaves out, from
// $CORRIDOR_MUTATE (empty: none). Only scripts/mutation.sh builds with
// the tag corridor_mutation.
var mutated = func() string {
	// Even built with the tag, only a test binary may leave a guard out.
	if !testing.Testing() {
		panic("dataplane: built with the tag corridor_mutation outside a test binary: the fail-closed guards could be turned off; rebuild without it")
	}
	g := os.Getenv("CORRIDOR_MUTATE")
	if g != "" && !slices.Contains(Guards, g) {
		panic(fmt.Sprintf("CORRIDOR_MUTATE=%q: not a guard (%v)", g, Guards))
	}
	if g != "" {
		fmt.Fprintf(os.Stderr, "corridor_mutation: guard %q is OFF\n", g)
	}
	return g
}()

// guardOff reports whether guard g is left out in this mutation build.
func guardOff(g string) bool { return g != "" && g == mutated }
