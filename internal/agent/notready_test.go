package agent_test

import (
	"errors"
	"strings"
	"testing"
)

// A data plane that cannot be opened (a second agent on the machine whose
// WireGuard device name is taken) makes the agent report itself not
// ready, with the error that says what to do, until a pass succeeds.
func TestFailedDataplaneIsReportedNotReady(t *testing.T) {
	h := newHarness(t)
	h.dp.Fail(errors.New("open UAPI socket for corw0: unix socket in use: give each agent on one machine its own --wg-name"))
	h.cp.SetDesired(state())
	h.start()
	eventually(t, "a not-ready status", func() bool {
		sts := h.cp.Statuses(host)
		return len(sts) > 0 && strings.Contains(sts[len(sts)-1].NotReady, "--wg-name")
	})
	h.dp.Fail(nil)
	h.cp.SetDesired(state("s1/web/0"))
	eventually(t, "a ready status", func() bool {
		sts := h.cp.Statuses(host)
		last := sts[len(sts)-1]
		return last.NotReady == "" && last.AppliedRevision == 2
	})
}
