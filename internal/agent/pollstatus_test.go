package agent_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/agent/agenttest"
	"github.com/corridor-dev/corridor/internal/api"
)

// carrying is a fake control plane whose long-poll takes the agent's
// status, as the server does (POST .../desired), or refuses it as an
// older server does (404: api.ErrPollStatusUnsupported).
type carrying struct {
	*agenttest.Client
	rec *carried
}

type carried struct {
	mu       sync.Mutex
	refuse   bool
	tries    int
	statuses []api.Status
}

func (c carrying) DesiredWithStatus(ctx context.Context, name string, index int64, wait time.Duration, st api.Status, stored func()) (api.DesiredState, error) {
	c.rec.mu.Lock()
	c.rec.tries++
	refuse := c.rec.refuse
	if !refuse {
		c.rec.statuses = append(c.rec.statuses, st)
	}
	c.rec.mu.Unlock()
	if refuse {
		return api.DesiredState{}, fmt.Errorf("%w: %w", api.ErrPollStatusUnsupported, &api.StatusError{Code: 404, Message: "no such endpoint"})
	}
	stored()
	return c.Desired(ctx, name, index, wait)
}

func (r *carried) get() (int, []api.Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tries, append([]api.Status(nil), r.statuses...)
}

func newCarryingHarness(t *testing.T, refuse bool) (*harness, *carried) {
	h := newHarness(t)
	rec := &carried{refuse: refuse}
	h.cfg.Connect = func(id *agent.Identity) (agent.ControlPlane, error) {
		c, err := h.cp.Connect(id.CertPEM)
		if err != nil {
			return nil, err
		}
		return carrying{Client: c, rec: rec}, nil
	}
	return h, rec
}

// The report that a new revision is applied rides on the next long-poll
// (the status loop's interval is an hour here): red without the poll
// loop's carried acknowledgement.
func TestAckCarriedByNextPoll(t *testing.T) {
	h, rec := newCarryingHarness(t, false)
	h.start()
	for i, tasks := range [][]string{{"shop/web-1"}, {"shop/web-1", "shop/web-2"}} {
		r := h.apply(t, fmt.Sprintf("state %d applied", i+1), state(tasks...))
		eventually(t, fmt.Sprintf("revision %d acknowledged by a long-poll", r), func() bool {
			_, sts := rec.get()
			for _, st := range sts {
				if st.AppliedRevision == r && st.Name == host && len(st.Tasks) == len(tasks) {
					return true
				}
			}
			return false
		})
	}
}

// Against an older server (404 to the long-poll with a status) the agent
// reports separately and polls as before, and does not try again at each
// revision: red when the fallback is missing (the refused poll is retried
// at every state, and the report may be lost).
func TestAckFallsBackOnOlderServer(t *testing.T) {
	h, rec := newCarryingHarness(t, true)
	h.start()
	for i, tasks := range [][]string{{"shop/web-1"}, {"shop/web-1", "shop/web-2"}, {"shop/web-2"}} {
		r := h.apply(t, fmt.Sprintf("state %d applied", i+1), state(tasks...))
		eventually(t, fmt.Sprintf("revision %d reported separately", r), func() bool {
			for _, st := range h.cp.Statuses(host) {
				if st.AppliedRevision == r {
					return true
				}
			}
			return false
		})
	}
	if tries, _ := rec.get(); tries != 1 {
		t.Errorf("long-poll with a status tried %d times against an older server, want once (then %s of separate reports)", tries, "10m")
	}
}
