package server

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
)

// Actions of the events the controller records when a server's heartbeat
// state changes.
const (
	EventServerDown = "server.down" // silent for longer than the heartbeat timeout
	EventServerUp   = "server.up"   // a server that was down reports again
)

// noteDownChanges records a server.down event for each server that is down
// now and was not at the previous compile (prev is that compile's downKey,
// "" before the first), and a server.up event for each that came back. A
// newly elected leader starts from an empty down set; since every agent
// gets a full timeout after the controller's start (fleet), its first
// compile sees nobody down that was not silent that long under it.
func (c *controller) noteDownChanges(ctx context.Context, prev string, states map[string]string, sn *store.Snapshot, seen map[string]time.Time, now, since time.Time) {
	var was []string
	if prev != "" {
		_ = json.Unmarshal([]byte(prev), &was)
	}
	wasDown := map[string]bool{}
	for _, n := range was {
		wasDown[n] = true
	}
	names := make([]string, 0, len(states))
	for n := range states {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		down := states[name] == spec.ServerDown
		switch {
		case down && !wasDown[name]:
			msg := downMessage(name, sn, seen, now, since, c.timeout)
			c.log.Warn("server down", "server", name, "why", msg)
			c.event(ctx, EventServerDown, "server/"+name, msg)
		case !down && wasDown[name] && states[name] != api.ServerRevoked:
			c.log.Info("server up again", "server", name)
			c.event(ctx, EventServerUp, "server/"+name, "reports again; it takes new tasks")
		}
	}
}

// downMessage says why name is down and which tasks leave it.
func downMessage(name string, sn *store.Snapshot, seen map[string]time.Time, now, since time.Time, timeout time.Duration) string {
	last, what := seen[name], "no status"
	if last.IsZero() || last.Before(since) {
		last, what = since, "no status since this controller started"
	}
	var tasks []string
	for _, p := range sn.Placement {
		for _, t := range p.Tasks {
			if t.Server == name {
				tasks = append(tasks, t.ID)
			}
		}
	}
	sort.Strings(tasks)
	msg := fmt.Sprintf("%s for %s (heartbeat timeout %s)", what, now.Sub(last).Round(100*time.Millisecond), timeout)
	if len(tasks) > 0 {
		msg += "; its tasks move: " + strings.Join(tasks, ", ")
	}
	return msg
}

// event records one controller event, logging a failure to record it.
func (c *controller) event(ctx context.Context, action, object, msg string) {
	if err := c.st.AppendEvent(ctx, api.Event{Who: "controller", Action: action, Object: object, Message: msg}); err != nil {
		c.log.Warn("record event", "action", action, "err", err)
	}
}
