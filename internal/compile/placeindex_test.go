package compile

import (
	"math/rand"
	"os"
	"path/filepath"
	"testing"
)

// TestPlacementIndexSameAsScan: the index placeTask ranks servers with
// (candIndex) finds, for every task placed, the same best servers and the
// same servers that cannot take it as the scan of every server it
// replaces (checkScan), on random fleets (down, draining, labels, spread,
// kept tasks, every cap on the rejections listed), the golden cases and
// a sized fleet with spread classes.
func TestPlacementIndexSameAsScan(t *testing.T) {
	scanCheck = true
	t.Cleanup(func() { scanCheck = false })
	compile := func(name string, in Input) {
		t.Helper()
		p, err := Compile(in)
		if err != nil {
			if _, ok := err.(*PlacementError); !ok {
				t.Fatalf("%s: %v", name, err)
			}
			return
		}
		// Again from its placement, part of it kept, and more tasks.
		in.Current, in.Networks = assignments(p)
		in.Current = in.Current[:len(in.Current)/2]
		for i := range in.Apps {
			for j := range in.Apps[i].Classes {
				in.Apps[i].Classes[j].Tasks++
			}
		}
		if _, err := Compile(in); err != nil {
			if _, ok := err.(*PlacementError); !ok {
				t.Fatalf("%s, recompiled: %v", name, err)
			}
		}
	}
	r := rand.New(rand.NewSource(5))
	for i := range 400 {
		in := randInput(r)
		in.MaxRejected = []int{0, 1, 2, 3, -1}[i%5]
		compile("random", in)
	}
	cases, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		if c.IsDir() && c.Name() != "fuzz" {
			compile(c.Name(), loadCase(t, filepath.Join("testdata", c.Name())))
		}
	}
	servers, apps, div := 90, 6, 8
	if raceDetector {
		servers, apps, div = 40, 4, 20
	}
	for _, m := range []int{0, 4, -1} {
		in := sizedFleet(servers, apps, div)
		in.MaxRejected = m
		compile("fleet", in)
	}
}
