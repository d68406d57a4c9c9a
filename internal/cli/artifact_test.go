package cli

import (
	"testing"

	"github.com/corridor-dev/corridor/internal/api"
)

func TestTaskReasonShowsFailure(t *testing.T) {
	var x api.TaskInfo
	x.Reason.Chosen = "spread: no task of the app yet"
	if got := taskReason(x); got != x.Reason.Chosen {
		t.Errorf("unreported: %q", got)
	}
	x.Status = &api.TaskStatus{State: api.TaskRunning, Message: "ignored"}
	if got := taskReason(x); got != x.Reason.Chosen {
		t.Errorf("running: %q", got)
	}
	x.Status = &api.TaskStatus{State: api.TaskFailed, Message: "artifact: sha256 mismatch: want a, got b"}
	if got := taskReason(x); got != x.Status.Message {
		t.Errorf("failed: %q, want the failure", got)
	}
}
