package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
)

// Actions of the drain events.
const (
	EventServerDrain   = "server.drain"   // an operator drains a server
	EventServerUndrain = "server.undrain" // an operator makes it ready again
	EventServerDrained = "server.drained" // the controller placed its last task elsewhere
)

// drainServer sets a server draining: the controller places no new task
// there and places the tasks it runs elsewhere.
func (s *Server) drainServer(w http.ResponseWriter, r *http.Request) {
	s.setDraining(w, r, true)
}

// undrainServer makes a draining server ready again; tasks that moved away
// stay where they are.
func (s *Server) undrainServer(w http.ResponseWriter, r *http.Request) {
	s.setDraining(w, r, false)
}

func (s *Server) setDraining(w http.ResponseWriter, r *http.Request, drain bool) {
	name := r.PathValue("name")
	ev := api.Event{Who: who(r), Object: "server/" + name}
	if drain {
		ev.Action = EventServerDrain
		tasks := s.tasksOn(r.Context(), name)
		ev.Message = "draining: takes no new task"
		if len(tasks) > 0 {
			ev.Message += "; its tasks move: " + strings.Join(tasks, ", ")
		}
	} else {
		ev.Action, ev.Message = EventServerUndrain, "ready: takes new tasks again (tasks that moved away stay where they are)"
	}
	_, err := s.st.UpdateServer(r.Context(), name, func(rec *store.ServerRecord) (bool, error) {
		if rec.Revoked {
			return false, errRevoked
		}
		want := spec.ServerReady
		if drain {
			want = spec.ServerDraining
		}
		if rec.Server.State == want || !drain && rec.Server.State == "" {
			return false, nil
		}
		rec.Server.State = want
		return true, nil
	}, &ev)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeNoServer(w, name)
		return
	case errors.Is(err, errRevoked):
		writeError(w, http.StatusConflict, "server "+name+" was removed")
		return
	case err != nil:
		writeErr(w, err)
		return
	}
	s.log.Info(ev.Action, "server", name, "by", who(r))
	s.getServer(w, r)
}

// tasksOn lists the IDs of the tasks placed on server name (best effort:
// for an event's message).
func (s *Server) tasksOn(ctx context.Context, name string) []string {
	sn, err := s.st.Snapshot(ctx)
	if err != nil {
		return nil
	}
	return placedOn(sn, name)
}

func placedOn(sn *store.Snapshot, name string) []string {
	var out []string
	for _, p := range sn.Placement {
		for _, t := range p.Tasks {
			if t.Server == name {
				out = append(out, t.ID)
			}
		}
	}
	sort.Strings(out)
	return out
}

// noteDrained records a server.drained event for each draining server that
// held tasks before this placement and holds none after it.
func (c *controller) noteDrained(ctx context.Context, sn *store.Snapshot, states map[string]string, after map[string]int) {
	for name, st := range states {
		if st != spec.ServerDraining || after[name] > 0 {
			continue
		}
		if before := placedOn(sn, name); len(before) > 0 {
			c.log.Info("server drained", "server", name)
			c.event(ctx, EventServerDrained, "server/"+name, fmt.Sprintf("no task left: %s placed elsewhere", strings.Join(before, ", ")))
		}
	}
}
