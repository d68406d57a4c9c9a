// Package compile is Corridor's policy compiler: one pure, deterministic
// function from (apps, servers, current placement) to (placement, paths,
// per-host desired state). The server, the agent, `corridor plan` and the
// tests all call Compile; nothing else decides where a task runs or what a
// host must set up.
package compile

import (
	"net/netip"

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
}

// Assignment is one task's server and overlay address.
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
	Tasks    []Task       `json:"tasks"`
	Paths    Paths        `json:"paths"`
	Hosts    []HostState  `json:"hosts"` // one per server in Input, sorted by name
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

// Rejection is why one server was not chosen.
type Rejection struct {
	Server string `json:"server"`
	Why    string `json:"why"`
}

// Path is one realised rule between two tasks.
type Path struct {
	App        string     `json:"app"`
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

// HostState is everything one host must set up, and nothing more.
type HostState struct {
	Host    string     `json:"host"`
	Address netip.Addr `json:"address"` // underlay
	// VTEPMAC is the MAC of this host's corv0 (see VTEPMAC()).
	VTEPMAC       string `json:"vtepMAC"`
	WireGuardPort int    `json:"wireguardPort"`
	// KeyGeneration is the server's spec.Server.KeyGeneration: the agent
	// rotates its WireGuard key when this exceeds its key's generation.
	KeyGeneration int64 `json:"keyGeneration,omitempty"`

	Guests []Guest `json:"guests"`
	// Peers are the WireGuard peers of corw0: only servers with which this
	// host shares at least one encrypted path; AllowedIPs exactly the
	// remote guests reached encrypted (as /32 or /128).
	Peers []Peer `json:"peers"`
	// VXLAN entries for plain paths: one per remote host, listing the
	// remote guests reached in plain.
	VXLAN []VXLANEntry `json:"vxlan"`
	// Routes say how a packet from a local guest to a remote guest
	// leaves: by corw0 (encrypted) or corv0 (plain). The same remote
	// address may appear twice with different sources: the decision is per
	// (source class, destination class) pair.
	Routes []Route `json:"routes"`
	// Firewall rules for this host's guests (egress and ingress).
	Firewall []FirewallRule `json:"firewall"`
}

// Guest is a task this host runs.
type Guest struct {
	Task    string     `json:"task"` // task ID
	App     string     `json:"app"`
	Class   string     `json:"class"`
	Index   int        `json:"index"`
	Address netip.Addr `json:"address"`
	// HostIf is the host-side interface (veth or tap) name, "corg" + hash.
	HostIf    string         `json:"hostIf"`
	Spec      spec.Guest     `json:"spec"`
	Resources spec.Resources `json:"resources"`
	// Env is the environment the task program gets, Corridor's contract
	// (CORRIDOR_APP, CORRIDOR_CLASS, CORRIDOR_TASK, CORRIDOR_ADDR and one
	// CORRIDOR_PEERS_<CLASS> per destination class) merged over Spec.Env.
	Env map[string]string `json:"env"`
}

// Peer is a WireGuard peer of corw0.
type Peer struct {
	Server     string         `json:"server"`
	PublicKey  string         `json:"publicKey"`
	Endpoint   netip.AddrPort `json:"endpoint"`
	AllowedIPs []netip.Prefix `json:"allowedIPs"`
}

// VXLANEntry is one remote host reached in plain by corv0.
type VXLANEntry struct {
	Server   string       `json:"server"`
	Underlay netip.Addr   `json:"underlay"`
	MAC      string       `json:"mac"` // the remote corv0 MAC
	Guests   []netip.Addr `json:"guests"`
}

// Route is how packets from a set of local guests to one remote guest
// leave the host.
type Route struct {
	Sources []netip.Addr `json:"sources"` // local guest addresses
	Dest    netip.Addr   `json:"dest"`    // remote guest address
	Server  string       `json:"server"`  // where Dest runs
	Encrypt bool         `json:"encrypt"` // corw0 when true, corv0 when false
}

// Directions of a firewall rule, seen from this host's guests.
const (
	Egress  = "egress"  // from a local guest
	Ingress = "ingress" // to a local guest
)

// FirewallRule allows new connections from Sources to Dests on Ports.
// Everything else to and from guests is denied; replies pass by conntrack.
type FirewallRule struct {
	App       string       `json:"app"`
	FromClass string       `json:"fromClass"`
	ToClass   string       `json:"toClass"`
	Direction string       `json:"direction"`
	Sources   []netip.Addr `json:"sources"`
	Dests     []netip.Addr `json:"dests"`
	Protocol  string       `json:"protocol"`
	Ports     []int        `json:"ports"`
	Encrypt   bool         `json:"encrypt"`
	// Ingress only: remote sources of an encrypted pair are accepted only
	// when they arrive on corw0, remote sources of a plain pair only on
	// corv0, local sources only from their own guest interface. Sources
	// lists all of them; RemoteSources the subset on other servers.
	RemoteSources []netip.Addr `json:"remoteSources,omitempty"`
}
