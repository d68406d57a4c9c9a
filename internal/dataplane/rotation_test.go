package dataplane

import (
	"strings"
	"testing"
)

func TestSpareName(t *testing.T) {
	for in, want := range map[string]string{
		"corw0":           "corw0+",
		"corw1":           "corw1+",
		"corw-a":          "corw-a+",
		"corw12345678901": "corw1234567890+",
	} {
		if got := SpareName(in); got != want || len(got) > 15 {
			t.Errorf("SpareName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRulesetNamesBothWireGuardDevices: every rule that names the
// WireGuard device names the second device of a key rotation too, so that
// the ruleset is the same before, during and after a rotation.
func TestRulesetNamesBothWireGuardDevices(t *testing.T) {
	d, err := buildDesired(validState(t))
	if err != nil {
		t.Fatal(err)
	}
	rs := buildRuleset(d, "corw0")
	first, second := 0, 0
	for _, r := range rs.rules {
		first += strings.Count(r.desc, `"corw0"`)
		second += strings.Count(r.desc, `"corw0+"`)
	}
	if first == 0 || first != second {
		t.Fatalf("the ruleset names corw0 %d times and corw0+ %d times:\n%s", first, second, rs.text())
	}
	if !strings.Contains(rs.text(), `oifname != "corw0" oifname != "corw0+" counter name "path" drop`) {
		t.Fatalf("no path check for the encrypted mark leaving by neither WireGuard device:\n%s", rs.text())
	}
}
