package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/settle"
)

// defaultWaitTimeout is how long `apply --wait` waits unless told.
const defaultWaitTimeout = 2 * time.Minute

// waitSettled waits (at most timeout) until apps have settled, as
// settle.Wait defines it, and shows on talk what it waits for and how far
// it got: one line rewritten in place on a terminal, a line per change
// otherwise. On timeout it returns an error that lists what is still
// unsettled.
func waitSettled(ctx context.Context, c *api.Client, apps []string, timeout time.Duration, talk io.Writer) (settle.State, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	what := strings.Join(apps, ", ")
	if what == "" {
		what = "the fleet"
	}
	start := time.Now()
	tty := isTerminal(talk)
	shown := ""
	st, err := settle.Wait(ctx, c, settle.Options{Apps: apps, Progress: func(s settle.State) {
		if s.Settled() || s.Summary() == shown {
			return // the settled state gets its own line below
		}
		shown = s.Summary()
		line := fmt.Sprintf("waiting for %s to settle: %s (%s)", what, shown, time.Since(start).Round(100*time.Millisecond))
		if tty {
			fmt.Fprintf(talk, "\r\033[K%s", line)
		} else {
			fmt.Fprintln(talk, line)
		}
	}})
	if tty && shown != "" {
		if err == nil {
			fmt.Fprint(talk, "\r\033[K") // the line below replaces it
		} else {
			fmt.Fprintln(talk) // keep the last counts in view
		}
	}
	var pe *settle.PendingError
	if errors.As(err, &pe) {
		// Waiting longer would not place them: say so now.
		return st, &exitError{code: 1, err: pe}
	}
	if err != nil {
		return st, &exitError{code: 1, err: fmt.Errorf("%s did not settle within %s; still unsettled:%s", what, timeout, indentList(st.Unsettled))}
	}
	fmt.Fprintf(talk, "%s settled in %s: %s\n", what, time.Since(start).Round(100*time.Millisecond), st.Summary())
	return st, nil
}

// isTerminal tells whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
