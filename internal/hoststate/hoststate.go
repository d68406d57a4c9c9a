// Package hoststate is the versioned host-state contract: the one type
// for what a host must set up, as the compiler makes it (compile.Plan's
// Hosts), as the server stores it in etcd (hosts/<name>/desired), as the
// API carries it to the agent (Desired) and as the agent keeps it on disk
// for fail static (desired.json), and the one Validate the agent calls
// before it keeps or applies a state.
//
// Every State carries its schema version, "major.minor". A reader accepts
// any state of its own major version, older or newer minor (a minor
// version only adds fields an older reader may ignore), and refuses a newer
// major version (ErrNewerSchema). A state without a schema is of the
// format written before the schema existed, which is 1.0.
//
// A minor version whose fields an older reader must not ignore is written
// only to hosts that read it: schema 1.5 holds the routes as route groups
// (routegroups.go), which an agent of 1.3/1.4 would ignore and then route
// nothing to remote guests. The agent reports the newest schema it reads
// (ReadSchema, in api.Status.Schema), and the control plane writes each
// host's state for it (State.EncodeFor): groups to a 1.5 agent, the
// expanded routes of 1.3 (1.4 during a move), byte for byte as before,
// to every other. Schema 1.6 (derived.go) leaves out the peers' and VXLAN
// entries' lists, which the route groups give, and is written the same
// way: only to an agent that reports it reads 1.6.
package hoststate

import (
	"encoding/json"
	"net/netip"

	"github.com/corridor-dev/corridor/internal/spec"
)

// The schema version this build writes and reads.
const (
	SchemaMajor = 1
	SchemaMinor = 6
	// Schema is SchemaMajor.SchemaMinor as states carry it. 1.1 adds
	// Guest.Network, 1.2 Ingress, 1.3 the hitless key rotation
	// (RotationPhase, PublicKey, Peer.NextPublicKey), which a state of an
	// older schema may not carry. FirewallRule.ToApp came without a new
	// minor version: a reader that does not know it refuses a state
	// holding a rule across apps (the rule's dests are outside its App's
	// network), so it fails closed rather than applying half of it.
	Schema = "1.3"
	// SchemaMove is the schema of a state that carries a task move
	// (Staged, Hold: docs/architecture.md, "Moving a task: make before
	// break"). Only such states are written in it, so that every other
	// state stays byte for byte what an agent of schema 1.3 reads; one
	// that does not know the fields ignores them, which fails safe: it
	// starts no staged copy (the move waits, then falls back to moving
	// the task in one step) and holds nothing.
	SchemaMove = "1.4"
	// SchemaGroups is the schema of a state that holds its routes as
	// groups (RouteGroups, see routegroups.go). The control plane writes
	// it only to a host whose agent reported it reads it
	// (api.Status.Schema); every other host gets the same routes
	// expanded, in the schema it reads (EncodeFor).
	SchemaGroups = "1.5"
	// SchemaDerived is the schema of a state whose peers and VXLAN
	// entries carry no lists (State.Derived, see derived.go): the reader
	// derives them from the route groups. Written, like SchemaGroups,
	// only to a host whose agent reported it reads it (EncodeFor).
	SchemaDerived = "1.6"
	// ReadSchema is the newest schema this build reads, as its agent
	// reports it (api.Status.Schema).
	ReadSchema = SchemaDerived
)

// Desired is a host's desired state at a revision, as the API serves it
// and the agent keeps it on disk. Revision only grows, and changes only
// when State does (it is the etcd mod revision of the stored State).
// Signature is the control plane's signature of State (see sign.go); the
// agent applies no state without a valid one.
type Desired struct {
	Revision  int64      `json:"revision"`
	State     State      `json:"state"`
	Signature *Signature `json:"signature,omitempty"`

	// stateJSON is the compact JSON State was decoded from, nil for a
	// Desired made in memory: what the signature covers (Canonical).
	stateJSON []byte
}

// State is everything one host must set up, and nothing more.
type State struct {
	// Schema is the version of this format, "major.minor" (see the
	// package doc); empty means 1.0.
	Schema  string     `json:"schema,omitempty"`
	Host    string     `json:"host"`
	Address netip.Addr `json:"address"` // underlay
	// VTEPMAC is the MAC of this host's corv0 (see compile.VTEPMAC).
	VTEPMAC       string `json:"vtepMAC"`
	WireGuardPort int    `json:"wireguardPort"`
	// KeyGeneration is the generation of the key rotation the control
	// plane runs on this host (spec.KeyRotation.Generation; 0 or the
	// generation of the last one when none is under way): the agent makes
	// its next key (dataplane.PrepareKey) when this exceeds its key's
	// generation.
	KeyGeneration int64 `json:"keyGeneration,omitempty"`
	// RotationPhase is where this host's own key rotation stands (see docs/architecture.md, "Hitless key rotation"): empty when
	// none is under way (or the agent has made its next key and the
	// control plane has not announced it yet), RotationAnnounce while its
	// peers hold its next key beside the current one, RotationCommit once
	// the control plane holds the next key as the current one (PublicKey):
	// the host puts it on its first device and keeps its second until
	// the phase is cleared.
	RotationPhase string `json:"rotationPhase,omitempty"`
	// PublicKey is, while RotationPhase is set, the key the control plane
	// holds as this host's current one.
	PublicKey string `json:"publicKey,omitempty"`
	// Derived (schema 1.6, see derived.go) says that Peers' AllowedIPs
	// and VXLAN's Guests are left empty: they are what the route groups
	// give, and every reader takes them from PeerLists and VXLANLists
	// (or Filled), never from the fields. Only the compiler sets it, and
	// only EncodeFor writes it, to an agent that reads 1.6.
	Derived bool `json:"derived,omitempty"`

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
	// RouteGroups are routes held as groups (schema 1.5, see
	// routegroups.go): a state's routes are the expansion of its groups
	// followed by Routes (AllRoutes). Omitted when empty: a state of an
	// older schema never carries them.
	RouteGroups []RouteGroup `json:"routeGroups,omitempty"`
	// Firewall rules for this host's guests (egress and ingress).
	Firewall []FirewallRule `json:"firewall"`
	// Outbound are the connections local guests may open to outside
	// destinations (see outbound.go). Omitted when empty: a reader that
	// does not know it denies all outside traffic, as before.
	Outbound []Outbound `json:"outbound,omitempty"`
	// Ingress are the published ports this host is an entry host of
	// (schema 1.2, see ingress.go). Omitted when empty: a reader that
	// does not know it publishes nothing, as before.
	Ingress []IngressEntry `json:"ingress,omitempty"`

	// Staged are copies of tasks moving to this host (schema 1.4): the
	// agent starts them, but the data plane knows nothing of them (no
	// route, no firewall allowance, no WireGuard or VXLAN entry), so
	// nothing reaches them and whatever they send is dropped as a stray
	// guest's. The task still runs, and is routed, on the host it leaves.
	Staged []Guest `json:"staged,omitempty"`
	// Hold are the addresses of tasks about to move between hosts
	// (schema 1.4): the data plane drops new TCP connections to them
	// (their clients send the SYN again a second later), and the agent
	// reports the state applied only once no TCP connection to them is
	// open here any more, or its move grace has passed. When every host
	// has, no connection is left in flight to switch.
	Hold []netip.Addr `json:"hold,omitempty"`
}

// Phases of a host's own key rotation (State.RotationPhase).
const (
	RotationAnnounce = "announce"
	RotationCommit   = "commit"
)

// Empty is the state of a host that runs nothing, in this schema.
func Empty(host string) State { return State{Schema: Schema, Host: host} }

// UnmarshalJSON decodes a state. A state of a newer major schema is not
// decoded beyond its schema and host (its other fields may mean something
// else, or not fit these types): Validate then refuses it by name, rather
// than the decoding failing on some field.
func (st *State) UnmarshalJSON(b []byte) error {
	var head struct {
		Schema string `json:"schema"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return err
	}
	if major, _, err := ParseSchema(head.Schema); err == nil && major > SchemaMajor {
		var host struct {
			Host string `json:"host"`
		}
		_ = json.Unmarshal(b, &host) // best effort: for the agent's message only
		*st = State{Schema: head.Schema, Host: host.Host}
		return nil
	}
	type plain State // no methods: no recursion
	return json.Unmarshal(b, (*plain)(st))
}

// Guest is a task this host runs.
type Guest struct {
	Task    string     `json:"task"` // task ID
	App     string     `json:"app"`
	Class   string     `json:"class"`
	Index   int        `json:"index"`
	Address netip.Addr `json:"address"`
	// Network is the app's overlay network (schema 1.1): Address must be
	// a task address in it, whatever else the state says. Empty in states
	// of schema 1.0.
	Network netip.Prefix `json:"network,omitzero"`
	// HostIf is the host-side interface (veth or tap) name, "corg" + hash.
	HostIf    string         `json:"hostIf"`
	Spec      spec.Guest     `json:"spec"`
	Resources spec.Resources `json:"resources"`
	// Env is the environment the task program gets, Corridor's contract
	// (CORRIDOR_APP, CORRIDOR_CLASS, CORRIDOR_TASK, CORRIDOR_ADDR and one
	// CORRIDOR_PEERS_<CLASS> per destination class) merged over Spec.Env.
	Env map[string]string `json:"env"`
	// Resolvers are the DNS servers of the task's /etc/resolv.conf (the
	// app's spec.App.Resolvers); empty: the runtime's default.
	Resolvers []netip.Addr `json:"resolvers,omitempty"`
}

// Peer is a WireGuard peer of corw0.
type Peer struct {
	Server    string `json:"server"`
	PublicKey string `json:"publicKey"`
	// NextPublicKey is set while the peer rotates its key:
	// this host holds the peer under NextPublicKey on its second
	// WireGuard device (its own key, WireGuardPort+1; the peer's endpoint
	// port+1) beside PublicKey on the first. When NextPublicKey differs
	// from PublicKey the second device is the one to move to (phase
	// announce); when they are equal the control plane has committed the
	// new key and the first device is the one to move back to (phase
	// commit). See docs/architecture.md, "Hitless key rotation".
	NextPublicKey string         `json:"nextPublicKey,omitempty"`
	Endpoint      netip.AddrPort `json:"endpoint"`
	AllowedIPs    []netip.Prefix `json:"allowedIPs"`
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
	App       string `json:"app"`
	FromClass string `json:"fromClass"`
	// ToApp is the app of ToClass when it is not App: a rule
	// of App to a service it imports from ToApp (app to app). Sources
	// are then App's tasks and Dests ToApp's.
	ToApp     string       `json:"toApp,omitempty"`
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
