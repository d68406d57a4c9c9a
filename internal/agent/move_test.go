package agent_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// A staged copy of a moving task is started but given to the data plane
// only as staged (its interface is a stray's there), is reported running
// and staged, and becomes a guest without being started again.
func TestStagedGuest(t *testing.T) {
	h := newHarness(t)
	h.start()
	st := state("shop/web/0")
	h.apply(t, "first state", st)

	moving := moveState(st)
	g := moving.Guests[0]
	g.Task, g.Class, g.HostIf, g.Address = "shop/db/0", "db", "corg9", st.Routes[0].Dest // routed to s2 still
	moving.Staged = []hoststate.Guest{g}
	h.apply(t, "staged state", moving)
	if !h.guests.Running("shop/db/0") {
		t.Fatal("staged copy not started")
	}
	if v := h.guests.Violations(); len(v) > 0 {
		t.Fatalf("started before the data plane had the state: %v", v)
	}
	eventually(t, "a report of the staged copy running", func() bool {
		for _, s := range h.cp.Statuses(host) {
			if slices.ContainsFunc(s.Tasks, func(ts api.TaskStatus) bool { return ts.Task == "shop/db/0" && ts.Staged && ts.State == "running" }) {
				return true
			}
		}
		return false
	})
	starts := countEvents(h, "start:shop/db/0")

	// Switched: the copy is a guest of the state, routed here.
	switched := moveState(state("shop/web/0"))
	switched.Guests = append(switched.Guests, g)
	switched.Routes = switched.Routes[1:]
	switched.Peers[0].AllowedIPs = nil
	h.apply(t, "switched state", switched)
	if n := countEvents(h, "start:shop/db/0"); n != starts {
		t.Fatalf("the copy was started again when it became a guest (%d starts, was %d)", n, starts)
	}
	if !h.guests.Running("shop/db/0") {
		t.Fatal("guest gone after the switch")
	}
}

// A state that holds a moving task's address is reported applied only once
// no connection to it is open here, or the move grace has passed.
func TestHoldWaitsForOpenConnections(t *testing.T) {
	h := newHarness(t)
	h.cfg.MoveGrace = time.Minute
	h.start()
	st := state("shop/web/0")
	h.apply(t, "first state", st)

	db := st.Routes[0].Dest
	h.dp.SetOpenConns(db, 2)
	held := moveState(st)
	held.Hold = []netip.Addr{db}
	r := h.cp.SetDesired(held)
	eventually(t, "the hold applied to the data plane", func() bool { return h.dp.InSync(held) })
	time.Sleep(200 * time.Millisecond) // a while with connections open: not reported applied
	if got := h.agent.AppliedRevision(); got == r {
		t.Fatal("state reported applied while connections to the held address were open")
	}
	h.dp.SetOpenConns(db, 0)
	eventually(t, "applied once the connections ended", func() bool { return h.agent.AppliedRevision() == r })

	// The grace bounds the wait.
	h2 := newHarness(t)
	h2.cfg.MoveGrace = 300 * time.Millisecond
	h2.start()
	h2.apply(t, "first state", st)
	h2.dp.SetOpenConns(db, 1)
	start := time.Now()
	h2.apply(t, "held state, connections never end", held)
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("applied after %s, before the grace of 300ms", took)
	}
}

func countEvents(h *harness, ev string) int {
	n := 0
	for _, e := range h.ev.List() {
		if e == ev {
			n++
		}
	}
	return n
}

// moveState is st in the schema of a move, which names every guest's app
// network.
func moveState(st hoststate.State) hoststate.State {
	st.Schema = hoststate.SchemaMove
	st.Guests = slices.Clone(st.Guests)
	for i := range st.Guests {
		st.Guests[i].Network = netip.MustParsePrefix("100.64.0.0/24")
	}
	return st
}

// Once a state that no longer holds an address is applied (the address
// switched hosts), the connections tracked for it are forgotten, once;
// not while it is held.
func TestSwitchForgetsConnections(t *testing.T) {
	h := newHarness(t)
	h.cfg.MoveGrace = 100 * time.Millisecond
	h.start()
	st := state("shop/web/0")
	h.apply(t, "first state", st)
	db := st.Routes[0].Dest
	held := moveState(st)
	held.Hold = []netip.Addr{db}
	h.apply(t, "held state", held)
	if n := countEvents(h, "flush:"+db.String()); n != 0 {
		t.Fatalf("connections forgotten while held (%d)", n)
	}
	switched := moveState(state("shop/web/0"))
	switched.Routes[0].Server = "s3"
	h.apply(t, "switched state", switched)
	if n := countEvents(h, "flush:"+db.String()); n != 1 {
		t.Fatalf("connections of the switched address forgotten %d times, want once", n)
	}
}
