// Package compile is Corridor's policy compiler: one pure, deterministic
// function from (apps, servers, current placement) to (placement, paths,
// per-host desired state). The server, the agent, `corridor plan` and the
// tests all call Compile; nothing else decides where a task runs or what a
// host must set up.
package compile

import (
	"encoding/json"
	"net/netip"
	"slices"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// DefaultPool is the overlay pool from which app networks are allocated
// when an app names none.
var DefaultPool = netip.MustParsePrefix("100.64.0.0/10")

// DefaultWireGuardPort is the UDP port of corw0 when a server names none.
const DefaultWireGuardPort = 51820

// VXLANPort and VXLANVNI are those of corv0 on every host.
const (
	VXLANPort = 4789
	VXLANVNI  = 4242
)

// Input is everything the compiler reads. It is not modified.
type Input struct {
	Apps    []spec.App
	Servers []spec.Server
	// Current is the placement decided by an earlier compile (the previous
	// Plan's Tasks, reduced to Assignments). Tasks stay where they are
	// unless their server is gone or no longer fits.
	Current []Assignment
	// Networks are app networks allocated earlier (app name -> CIDR), kept
	// stable across compiles for apps that name no network.
	Networks map[string]netip.Prefix
	// Pool is where new app networks come from; zero means DefaultPool.
	Pool netip.Prefix
	// MaxRejected caps how many other servers each placement Reason lists
	// (the closest runners-up): zero means DefaultMaxRejected, negative
	// means every other server.
	MaxRejected int
	// Pending, when true, makes a task that fits on no server pending
	// (Plan.Pending, with the reason) instead of failing the whole compile
	// with *PlacementError: everything else is placed as usual. The
	// controller's recompiles set it, so that a host loss with too little
	// room left never stops the rest of the fleet from converging.
	Pending bool
	// Keep names draining servers whose tasks stay where they are in this
	// compile (they still take no new task): the controller compiles the
	// fleet as it is before a make-before-break move with it, beside the
	// fleet after the move (docs/architecture.md, "Moving a task").
	Keep []string
}

// Assignment is one task's server and overlay address. A pending task's
// assignment has no Server: it keeps its address until it is placed.
type Assignment struct {
	Task    string     `json:"task"` // task ID: "<app>/<class>/<index>"
	Server  string     `json:"server"`
	Address netip.Addr `json:"address"`
}

// Plan is the compiler's output. Every slice is sorted, so that the same
// Input always gives the same bytes when marshalled. A Plan is read-only:
// its slices may share backing arrays.
type Plan struct {
	Networks []AppNetwork `json:"networks"`
	Tasks    TaskList     `json:"tasks"`
	Paths    Paths        `json:"paths"`
	Hosts    []HostState  `json:"hosts"` // one per server in Input, sorted by name
	// Unresolved are the rules to imported services (app to app) that
	// give no path, or not on every port: the service's app or export is
	// gone, or no longer exports the port. Sorted by app and rule.
	Unresolved []Unresolved `json:"unresolved,omitempty"`
	// Pending are the tasks no server could take (only with
	// Input.Pending), in the order of Tasks: no Server, no paths, no
	// guest anywhere, but an Address kept for them.
	Pending []Task `json:"pending,omitempty"`
}

// MarshalJSON writes p with each host's route groups expanded into its
// routes (hoststate.State.Expanded): a plan's JSON (`corridor plan -o
// json`, the goldens) shows every route, as the states of schema 1.3
// hold them, whatever form the compiler keeps them in.
func (p Plan) MarshalJSON() ([]byte, error) {
	type plain Plan // no methods: no recursion
	x := plain(p)
	if slices.ContainsFunc(p.Hosts, func(h HostState) bool { return len(h.RouteGroups) > 0 }) {
		x.Hosts = make([]HostState, len(p.Hosts))
		for i := range p.Hosts {
			x.Hosts[i] = p.Hosts[i].Expanded()
		}
	}
	return json.Marshal(x)
}

// AppNetwork is the overlay network of one app.
type AppNetwork struct {
	App     string       `json:"app"`
	Network netip.Prefix `json:"network"`
}

// Task is one placed instance of a class.
type Task struct {
	ID      string     `json:"id"` // "<app>/<class>/<index>"
	App     string     `json:"app"`
	Class   string     `json:"class"`
	Index   int        `json:"index"`
	Server  string     `json:"server"`
	Address netip.Addr `json:"address"`
	Reason  Reason     `json:"reason"`
	// Pending, for a task in Plan.Pending, says why no server takes it
	// ("no server fits: needs cpu 2000m, ...").
	Pending string `json:"pending,omitempty"`
}

// equal says whether t and u are the same task, field by field.
func (t *Task) equal(u *Task) bool {
	return t.ID == u.ID && t.App == u.App && t.Class == u.Class && t.Index == u.Index &&
		t.Server == u.Server && t.Address == u.Address && t.Pending == u.Pending && t.Reason.equal(&u.Reason)
}

// Reason explains a placement.
type Reason struct {
	// Kept is true when the task stayed where an earlier compile put it.
	Kept bool `json:"kept,omitempty"`
	// Why this server, in one short sentence.
	Chosen string `json:"chosen"`
	// Why not each other server, in short (sorted by server name). On a
	// fleet larger than Input.MaxRejected+1 only the closest runners-up
	// are listed, and Omitted counts the others.
	Rejected []Rejection `json:"rejected,omitempty"`
	Omitted  int         `json:"omitted,omitempty"`
}

// equal says whether r and q are the same reason, field by field.
func (r *Reason) equal(q *Reason) bool {
	return r.Kept == q.Kept && r.Chosen == q.Chosen && r.Omitted == q.Omitted && slices.Equal(r.Rejected, q.Rejected)
}

// Rejection is why one server was not chosen.
type Rejection struct {
	Server string `json:"server"`
	Why    string `json:"why"`
}

// Path is one realised rule between two tasks.
type Path struct {
	App string `json:"app"`
	// ToApp is the app of To when it is not App: a path of a rule to a
	// service App imports (app to app).
	ToApp      string     `json:"toApp,omitempty"`
	From       string     `json:"from"` // task ID
	To         string     `json:"to"`   // task ID
	FromClass  string     `json:"fromClass"`
	ToClass    string     `json:"toClass"`
	FromServer string     `json:"fromServer"`
	ToServer   string     `json:"toServer"`
	FromAddr   netip.Addr `json:"fromAddr"`
	ToAddr     netip.Addr `json:"toAddr"`
	Protocol   string     `json:"protocol"`
	Ports      []int      `json:"ports"`
	// Encrypt is the class pair's decision. A path between two tasks on
	// the same server never leaves the host and needs no tunnel.
	Encrypt bool `json:"encrypt"`
	Local   bool `json:"local"` // both tasks on one server
}

// The per-host desired state is the host-state contract's type
// (internal/hoststate), shared with the wire, etcd and the agent's disk;
// these names are kept for the compiler's users.
type (
	HostState    = hoststate.State
	Guest        = hoststate.Guest
	Peer         = hoststate.Peer
	VXLANEntry   = hoststate.VXLANEntry
	Route        = hoststate.Route
	RouteGroup   = hoststate.RouteGroup
	RouteDest    = hoststate.RouteDest
	FirewallRule = hoststate.FirewallRule
)

// Directions of a firewall rule, seen from this host's guests.
const (
	Egress  = hoststate.Egress
	Ingress = hoststate.Ingress
)
