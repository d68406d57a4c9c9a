package spec

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Limits of the quantities a spec may name. They are far above any real
// machine; their job is to catch typos (a missing unit, a stray digit)
// before they become a placement nobody can satisfy.
const (
	MaxMilliCPU MilliCPU = 1024 * 1000 // 1024 CPUs
	MaxBytes    Bytes    = 16 << 40    // 16 TiB
)

// ParseMilliCPU reads a CPU quantity: "500m" (millicores), "2" or "1.5"
// (CPUs, at most three decimals).
func ParseMilliCPU(s string) (MilliCPU, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty CPU quantity: use \"500m\", \"2\" or 1.5")
	}
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("CPU quantity %q is negative", s)
	}
	var milli *big.Rat
	if num, ok := strings.CutSuffix(s, "m"); ok {
		if !isDecimal(num) || strings.Contains(num, ".") {
			return 0, fmt.Errorf("%q is not a CPU quantity: millicores are a whole number such as \"500m\"", s)
		}
		milli, _ = new(big.Rat).SetString(num)
	} else {
		if !isDecimal(s) {
			return 0, fmt.Errorf("%q is not a CPU quantity: use \"500m\" (millicores), \"2\" or 1.5 (CPUs)", s)
		}
		cpus, _ := new(big.Rat).SetString(s)
		milli = cpus.Mul(cpus, big.NewRat(1000, 1))
	}
	if !milli.IsInt() {
		return 0, fmt.Errorf("CPU quantity %q is finer than one millicore (1m = 0.001)", s)
	}
	if milli.Cmp(big.NewRat(int64(MaxMilliCPU), 1)) > 0 {
		return 0, fmt.Errorf("CPU quantity %q is more than %s CPUs", s, MaxMilliCPU)
	}
	return MilliCPU(milli.Num().Int64()), nil
}

// String gives the canonical form: whole CPUs as "2", else "1500m".
func (c MilliCPU) String() string {
	if c%1000 == 0 {
		return strconv.FormatInt(int64(c/1000), 10)
	}
	return strconv.FormatInt(int64(c), 10) + "m"
}

// MarshalYAML writes the canonical string, so that what is written reads
// back to the same value.
func (c MilliCPU) MarshalYAML() (any, error) { return c.String(), nil }

// UnmarshalYAML accepts "500m", "2", 2, 1.5 and "0.25".
func (c *MilliCPU) UnmarshalYAML(n *yaml.Node) error {
	s, err := quantityScalar(n)
	if err != nil {
		return err
	}
	v, err := ParseMilliCPU(s)
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// byteUnits are the suffixes a memory quantity may carry. Binary units come
// first so that String prefers them when two forms are equally short.
var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10},
	{"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"k", 1e3},
}

// ParseBytes reads a memory quantity: a byte count (1234) or a number with
// a unit: Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000).
// A fraction is accepted when the result is whole bytes ("1.5Gi").
func ParseBytes(s string) (Bytes, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty memory quantity: use \"256Mi\", \"1Gi\" or a byte count")
	}
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("memory quantity %q is negative", s)
	}
	num, mult := s, int64(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	if !isDecimal(num) {
		return 0, fmt.Errorf("%q is not a memory quantity: use a byte count or a number with a unit (Ki, Mi, Gi, Ti, k, M, G, T), such as \"256Mi\"", s)
	}
	r, _ := new(big.Rat).SetString(num)
	r.Mul(r, big.NewRat(mult, 1))
	if !r.IsInt() {
		return 0, fmt.Errorf("memory quantity %q is not a whole number of bytes", s)
	}
	if r.Cmp(big.NewRat(int64(MaxBytes), 1)) > 0 {
		return 0, fmt.Errorf("memory quantity %q is more than %s", s, MaxBytes)
	}
	return Bytes(r.Num().Int64()), nil
}

// String gives the shortest exact form, binary units first: "256Mi",
// "1Gi", "512M", or a byte count such as "1234".
func (b Bytes) String() string {
	best := strconv.FormatInt(int64(b), 10)
	bestDigits := len(best)
	if b <= 0 {
		return best
	}
	for _, u := range byteUnits {
		if int64(b)%u.mult != 0 {
			continue
		}
		// Fewer digits wins; on a tie the earlier (binary) unit stays.
		if num := strconv.FormatInt(int64(b)/u.mult, 10); len(num) < bestDigits {
			best, bestDigits = num+u.suffix, len(num)
		}
	}
	return best
}

// MarshalYAML writes the canonical form: a string with a unit, or a plain
// integer when no unit divides the count exactly.
func (b Bytes) MarshalYAML() (any, error) {
	s := b.String()
	if isDecimal(s) {
		return int64(b), nil
	}
	return s, nil
}

// UnmarshalYAML accepts 1234, "256Mi", "1Gi", "512M", "2G" and "100Ki".
func (b *Bytes) UnmarshalYAML(n *yaml.Node) error {
	s, err := quantityScalar(n)
	if err != nil {
		return err
	}
	v, err := ParseBytes(s)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// quantityScalar takes the text of a number or string scalar; anything else
// (a list, a mapping, true) cannot be a quantity.
func quantityScalar(n *yaml.Node) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("expected a quantity, got %s", describeNode(n))
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float":
		return n.Value, nil
	}
	return "", fmt.Errorf("expected a quantity, got %s", describeNode(n))
}

// isDecimal reports whether s is digits with an optional fraction ("1",
// "1.5", ".5", "2."), and short enough that no one can make the big.Rat
// arithmetic expensive.
func isDecimal(s string) bool {
	if s == "" || len(s) > 40 {
		return false
	}
	digits, dots := 0, 0
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
			digits++
		case r == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}
