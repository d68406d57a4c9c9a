package compile

import (
	"fmt"

	"github.com/corridor-dev/corridor/internal/spec"
)

// InputError is an input the compiler cannot work with. Field names the
// offending part of the input, e.g. `apps[shop].classes[db].tasks`.
type InputError struct {
	Field string
	Msg   string
}

func (e *InputError) Error() string { return e.Field + ": " + e.Msg }

func inputErr(field, format string, args ...any) error {
	return &InputError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// PlacementError says that a task fits on no server. Callers reach it with
// errors.As to tell "the fleet is full" apart from bad input.
type PlacementError struct {
	App   string
	Class string
	Task  string
	// Need is what one task of the class requests.
	Need spec.Resources
	// Closest is the ready server, matching the class's labels, that came
	// nearest to fitting the task, with what it had free; empty when no
	// server is ready and matches the labels.
	Closest string
	Free    spec.Resources
	// NoCandidate says why no server was even considered, when Closest is
	// empty (for instance "no ready server has label zone=a").
	NoCandidate string
}

func (e *PlacementError) Error() string {
	head := fmt.Sprintf("app %s class %s: no server fits task %s (needs cpu %s, memory %s)",
		e.App, e.Class, e.Task, fmtCPU(int64(e.Need.CPU)), fmtBytes(int64(e.Need.Memory)))
	if e.Closest == "" {
		return head + "; " + e.NoCandidate + " — add or fix servers, or change the class's placement labels"
	}
	short := ""
	if d := int64(e.Need.CPU) - int64(e.Free.CPU); d > 0 {
		short += "cpu " + fmtCPU(d)
	}
	if d := int64(e.Need.Memory) - int64(e.Free.Memory); d > 0 {
		if short != "" {
			short += ", "
		}
		short += "memory " + fmtBytes(d)
	}
	return fmt.Sprintf("%s; closest is %s with cpu %s, memory %s free (short %s) — add capacity or lower the request",
		head, e.Closest, fmtCPU(int64(e.Free.CPU)), fmtBytes(int64(e.Free.Memory)), short)
}

// fmtCPU prints millicores the way specs write them.
func fmtCPU(m int64) string { return fmt.Sprintf("%dm", m) }

// fmtBytes prints a size with the largest binary unit that divides it
// exactly, so that what we print can be pasted back into a spec.
func fmtBytes(b int64) string {
	units := []struct {
		suffix string
		size   int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}}
	if b != 0 {
		for _, u := range units {
			if b%u.size == 0 {
				return fmt.Sprintf("%d%s", b/u.size, u.suffix)
			}
		}
	}
	return fmt.Sprintf("%d", b)
}
