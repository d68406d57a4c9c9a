// Package api holds the wire types of Corridor's HTTP/JSON API (/v1),
// shared by the server, the agent and the CLI, and a small client for it.
package api

import (
	"encoding/json"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// JoinRequest is what an agent sends, with its join token, to obtain a
// client certificate. Only the public key ever leaves the host.
type JoinRequest struct {
	Name          string            `json:"name"`
	Token         string            `json:"token"`
	CSR           string            `json:"csr"` // PEM
	Address       string            `json:"address"`
	Capacity      spec.Resources    `json:"capacity"`
	Labels        map[string]string `json:"labels,omitempty"`
	PublicKey     string            `json:"publicKey"`
	WireGuardPort int               `json:"wireguardPort,omitempty"`
}

// RenewRequest is what an agent sends, authenticated by its current client
// certificate, to obtain a new one before that expires: a CSR for its name
// (the answer is a JoinResponse).
type RenewRequest struct {
	CSR string `json:"csr"` // PEM
}

// JoinResponse carries the agent's client certificate and the CA that
// signs the server's certificate.
type JoinResponse struct {
	Certificate string `json:"certificate"` // PEM
	CA          string `json:"ca"`          // PEM
}

// DesiredState is a host's desired state at a revision: the host-state
// contract's Desired (internal/hoststate), which the agent also keeps on
// disk.
type DesiredState = hoststate.Desired

// Task states as agents report them.
const (
	TaskPending  = "pending"
	TaskStarting = "starting"
	TaskRunning  = "running"
	TaskFailed   = "failed"
	TaskStopped  = "stopped"
)

// TaskStatus is the live state of one guest.
type TaskStatus struct {
	Task     string    `json:"task"`
	State    string    `json:"state"`
	Runtime  string    `json:"runtime"` // netns, vm-kvm, vm-tcg
	Restarts int       `json:"restarts"`
	Message  string    `json:"message,omitempty"`
	Since    time.Time `json:"since"`
	// Staged: a copy of a task moving to this host, started but not
	// routed yet (hoststate.State.Staged).
	Staged bool `json:"staged,omitempty"`
}

// PeerStatus is the live state of one WireGuard peer of corw0.
type PeerStatus struct {
	Server string `json:"server"`
	// PublicKey is the key the peer is held under.
	PublicKey     string    `json:"publicKey,omitempty"`
	LastHandshake time.Time `json:"lastHandshake,omitempty"`
	RxBytes       int64     `json:"rxBytes"`
	TxBytes       int64     `json:"txBytes"`
	// Spare: the peer is on the second WireGuard device of a key rotation
	// (corw0+). Routed: the routes to the peer's guests take this device.
	Spare  bool `json:"spare,omitempty"`
	Routed bool `json:"routed,omitempty"`
}

// DropCount is the firewall's drop counter for one app and class pair.
type DropCount struct {
	App       string `json:"app"`
	FromClass string `json:"fromClass"`
	ToClass   string `json:"toClass"`
	Packets   int64  `json:"packets"`
	// Kind is the data plane's counter kind (pair, out, in, spoof, path,
	// host, invalid; see internal/dataplane). Empty means pair. Only pair
	// counters carry both classes; out has FromClass, in has ToClass, the
	// others name no app. Kind "allow" is no drop: it counts the
	// connections the pair's egress rule allowed out of a local guest.
	Kind string `json:"kind,omitempty"`
	// Bytes the counter counted with its packets.
	Bytes int64 `json:"bytes,omitempty"`
}

// Status is an agent's heartbeat and status report.
type Status struct {
	Name      string `json:"name"`
	Address   string `json:"address"`
	PublicKey string `json:"publicKey"`
	// KeyGeneration is the generation of the host's WireGuard key: equal
	// to the server's spec keyGeneration once a rotation is done.
	KeyGeneration int64 `json:"keyGeneration,omitempty"`
	// NextPublicKey and NextKeyGeneration: the next key of a hitless
	// rotation under way (made on the host; only its public half is
	// reported), not yet committed.
	NextPublicKey     string            `json:"nextPublicKey,omitempty"`
	NextKeyGeneration int64             `json:"nextKeyGeneration,omitempty"`
	WireGuardPort     int               `json:"wireguardPort,omitempty"`
	Capacity          spec.Resources    `json:"capacity"`
	Labels            map[string]string `json:"labels,omitempty"`
	AppliedRevision   int64             `json:"appliedRevision"`
	// AppliedDigest is the digest of the state applied at AppliedRevision
	// ("sha256:..." of its canonical encoding, hoststate.Digest): the
	// server flags a host whose digest differs from the state it serves.
	AppliedDigest string `json:"appliedDigest,omitempty"`
	// APIAddr is host:port of the agent's local API (mTLS), through which
	// the server relays logs and verify probes; empty when it has none.
	APIAddr string `json:"apiAddr,omitempty"`
	// ControlPlane is the URL of the control-plane server the agent talks
	// to (one of its --server URLs: it fails over between them).
	ControlPlane string       `json:"controlPlane,omitempty"`
	Tasks        []TaskStatus `json:"tasks,omitempty"`
	Peers        []PeerStatus `json:"peers,omitempty"`
	Drops        []DropCount  `json:"drops,omitempty"`
	// Errors from the last reconcile, if any.
	Errors []string `json:"errors,omitempty"`
	// NotReady says why the host cannot run tasks now and what to do (its
	// data plane could not be applied: a WireGuard device it cannot open,
	// a name clash with another agent); empty when it can. The server
	// shows such a host as ServerNotReady.
	NotReady string `json:"notReady,omitempty"`
	// Fenced says why the host's paths are stopped (its lease with the
	// control plane ran out: agent --fence-after), "" when they are not.
	Fenced string    `json:"fenced,omitempty"`
	Time   time.Time `json:"time"`
	// Version is the agent's build version (internal/version).
	Version string `json:"version,omitempty"`
	// Schema is the newest host-state schema the agent reads
	// (hoststate.SchemaGroups and later: "1.5", "1.6"); empty for an
	// agent that predates the field. The control plane writes a host's
	// state in route groups (schema 1.5) only when its agent reported 1.5
	// or newer, and today's expanded routes otherwise; its peers and
	// VXLAN entries without their lists (1.6, hoststate.State.Derived)
	// only when it reported 1.6 or newer.
	Schema string `json:"schema,omitempty"`

	// WireGuardMode is the kind of the host's WireGuard device: kernel,
	// userspace (wireguard-go, where the kernel has no WireGuard) or
	// absent (not made yet: no encrypted path).
	WireGuardMode string `json:"wireguardMode,omitempty"`
	// FlowOffload says whether the host offloads established plain flows
	// to an nftables flowtable: on, off (agent --flow-offload=false) or
	// unavailable (its kernel has no flowtables); empty before the
	// agent's first apply. OffloadedFlows counts the connections
	// offloaded when the agent last reported.
	FlowOffload    string `json:"flowOffload,omitempty"`
	OffloadedFlows int    `json:"offloadedFlows,omitempty"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
	// Details, for validation errors: one line each, "file:line: field: msg".
	Details []string `json:"details,omitempty"`
}

// ProbeRequest asks an agent to prove one path with real traffic: from
// inside the guest of FromTask, connect to ToAddr:Port and send Marker,
// while capturing on the host's underlay interface.
type ProbeRequest struct {
	FromTask string `json:"fromTask"`
	ToAddr   string `json:"toAddr"`
	Network  string `json:"network"` // tcp or udp
	Port     int    `json:"port"`
	Marker   []byte `json:"marker"` // base64 in JSON
	// CaptureIface is the underlay interface to watch; empty: the agent's.
	CaptureIface string        `json:"captureIface,omitempty"`
	Timeout      time.Duration `json:"timeout"` // nanoseconds in JSON
}

// ProbeResult is what the probe saw.
type ProbeResult struct {
	Connected bool `json:"connected"`
	// Refused: the peer answered with a reset (the network let the packet
	// through but nothing listens). TimedOut: no answer (dropped).
	Refused  bool          `json:"refused"`
	TimedOut bool          `json:"timedOut"`
	RTT      time.Duration `json:"rtt"`
	// MarkerSeen: the marker crossed the underlay interface in plaintext.
	// It is reported whatever else failed: a leak seen is never dropped.
	MarkerSeen bool `json:"markerSeen"`
	// WireGuardFrames counts the WireGuard data frames between this host
	// and the destination's host (PeerUnderlay) seen on the underlay during
	// the probe: an encrypted pair is proven only with some.
	WireGuardFrames uint64 `json:"wireGuardFrames"`
	PeerUnderlay    string `json:"peerUnderlay,omitempty"`
	Error           string `json:"error,omitempty"`
	// Skipped says why the probe could not be run from this source (a
	// VM whose image has no probe responder); verify reports it
	// incomplete, never as a pass.
	Skipped string `json:"skipped,omitempty"`
}

// Event is one recorded change: who did what, when. The server keeps the
// newest 1,000.
type Event struct {
	Time time.Time `json:"time"`
	// Who: "admin", "agent:<server>" or "controller".
	Who string `json:"who"`
	// Action, such as "app.apply", "app.delete", "app.scale",
	// "server.join", "server.remove", "placement.update", "compile.error".
	Action string `json:"action"`
	// Object is what the action was about ("app/web", "server/s1").
	Object  string `json:"object,omitempty"`
	Message string `json:"message,omitempty"`
	// Revision is the etcd revision at which the event was recorded.
	Revision int64 `json:"revision,omitempty"`
}

// App is a stored app as the API shows it.
type App struct {
	Name string   `json:"name"`
	Spec spec.App `json:"spec"`
	// Revision is the app's version; send it back as If-Match to apply
	// only if nobody changed the app in between.
	Revision int64 `json:"revision"`
	// Source is the YAML the app was applied with; Notes lists changes
	// made since through the API (scale).
	Source    string    `json:"source,omitempty"`
	Notes     []string  `json:"notes,omitempty"`
	UpdatedBy string    `json:"updatedBy"`
	UpdatedAt time.Time `json:"updatedAt"`
	// Placed is how many of its tasks have a server.
	Placed  int    `json:"placed"`
	Network string `json:"network,omitempty"`
	// Unresolved says which of the app's imports, or rules to imported
	// services, have no path now: the exporting app or its export is
	// gone, or no longer offers the port ("field: why").
	Unresolved []string `json:"unresolved,omitempty"`
}

// ApplyResult is the answer to an apply: one entry per app of the body.
type ApplyResult struct {
	Apps []AppChange `json:"apps"`
	// Pending are the tasks of the applied apps that no server can take
	// now (Task.Pending says why): the apps are stored and these tasks
	// are placed as soon as there is room. See docs/operations.md, "When
	// there is too little room".
	Pending []compile.Task `json:"pending,omitempty"`
}

// AppChange is what an apply did to one app.
type AppChange struct {
	Name string `json:"name"`
	// Action: "created", "updated" or "unchanged".
	Action   string `json:"action"`
	Revision int64  `json:"revision"`
	// PreviousRevision is the revision this apply replaced (0: none). An
	// apply without If-Match that raced another lands after it, and says
	// so here and in the event log.
	PreviousRevision int64 `json:"previousRevision,omitempty"`
}

// ScaleRequest sets the task count of one class of an app.
type ScaleRequest struct {
	Class string `json:"class"`
	Tasks int    `json:"tasks"`
}

// Server states the API shows besides spec's ready, draining and down.
const (
	ServerRevoked = "removed" // removed by an operator; refused from then on
	ServerJoining = "joined"  // joined, no status report yet
	// ServerNotReady: the agent reports (Status.NotReady) that it cannot
	// run tasks, its data plane having failed; Errors say why.
	ServerNotReady = "not-ready"
)

// Server is a server as the API shows it.
type Server struct {
	Spec     spec.Server `json:"spec"`
	JoinedAt time.Time   `json:"joinedAt"`
	// State is the effective state: ready, draining, down (no heartbeat
	// within the timeout), removed, or not-ready (ready, but its agent
	// reports that its data plane failed).
	State    string    `json:"state"`
	LastSeen time.Time `json:"lastSeen,omitzero"`
	// DesiredRevision is the revision of the host's desired state;
	// AppliedRevision the one its agent last reported applied.
	DesiredRevision int64 `json:"desiredRevision"`
	AppliedRevision int64 `json:"appliedRevision"`
	// KeyGeneration is the generation of the WireGuard key the agent
	// last reported; below Spec.KeyGeneration while a rotation is under
	// way.
	KeyGeneration int64    `json:"keyGeneration"`
	Tasks         int      `json:"tasks"`
	Errors        []string `json:"errors,omitempty"`
	// DesiredDigest is the digest of the desired state the server serves;
	// AppliedDigest the one the agent reports applied. Tampered is set
	// when, at the same revision, they differ: the host applied a state
	// the control plane did not sign (its message says what differs).
	DesiredDigest string `json:"desiredDigest,omitempty"`
	AppliedDigest string `json:"appliedDigest,omitempty"`
	Tampered      string `json:"tampered,omitempty"`
	// ControlPlane is the control-plane server URL the agent last
	// reported talking to (it fails over between its --server URLs).
	ControlPlane string `json:"controlPlane,omitempty"`
	// WireGuardMode is the kind of WireGuard device the agent last
	// reported: kernel, userspace (wireguard-go) or absent.
	WireGuardMode string `json:"wireguardMode,omitempty"`
	// FlowOffload and OffloadedFlows: what the agent last reported
	// (Status.FlowOffload).
	FlowOffload    string `json:"flowOffload,omitempty"`
	OffloadedFlows int    `json:"offloadedFlows,omitempty"`
}

// TaskInfo is a placed task with its live status, when its agent
// reported one.
type TaskInfo struct {
	compile.Task
	Status *TaskStatus `json:"status,omitempty"`
}

// PathInfo is a compiled path with the live state of the WireGuard peer
// that carries it (encrypted paths between two servers), as the source
// server's agent reported it.
type PathInfo struct {
	compile.Path
	// Peer is the source host's view of the destination server, when
	// encrypted and reported.
	Peer *PeerStatus `json:"peer,omitempty"`
	// HandshakeAge is the time since the last WireGuard handshake, in
	// seconds (-1: never, or not reported).
	HandshakeAge float64 `json:"handshakeAge"`
	// Count, in a list asked for with Filter.ServerPairs, is how many
	// paths this one stands for (0 in a list of every path: one).
	Count int `json:"count,omitempty"`
}

// PlanResult is a dry run: what an apply would change.
type PlanResult struct {
	Apps    []AppChange    `json:"apps"`
	Changes []PlanChange   `json:"changes"`
	Tasks   []compile.Task `json:"tasks"`
	// Paths are the paths added and removed, per app and class pair.
	Paths []PathChange `json:"paths,omitempty"`
	// Hosts are the servers whose desired state would change (sorted).
	Hosts []string `json:"hosts,omitempty"`
}

// Changed reports whether applying would change anything: an app created
// or updated, a task, path or host state changed.
func (p PlanResult) Changed() bool {
	for _, a := range p.Apps {
		if a.Action != "unchanged" {
			return true
		}
	}
	return len(p.Changes) > 0 || len(p.Paths) > 0 || len(p.Hosts) > 0
}

// PlanChange is one change a dry run found.
type PlanChange struct {
	// Kind: "task", "path" or "host".
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Action: "add", "move", "remove", "pending" (tasks), "update" (hosts,
	// and the paths of one class pair).
	Action string `json:"action"`
	Detail string `json:"detail,omitempty"`
	// Server is where a task goes (add, move) or the host updated; From
	// the server a task leaves (move, remove).
	Server string `json:"server,omitempty"`
	From   string `json:"from,omitempty"`
}

// PathChange is what a dry run changes in the paths of one class pair of
// an app. A path whose kind, ports or servers change is in both lists.
type PathChange struct {
	App       string    `json:"app"`
	FromClass string    `json:"fromClass"`
	ToClass   string    `json:"toClass"`
	Added     []PathRef `json:"added,omitempty"`
	Removed   []PathRef `json:"removed,omitempty"`
}

// PathRef names one path between two tasks.
type PathRef struct {
	From       string `json:"from"` // task ID
	To         string `json:"to"`
	FromServer string `json:"fromServer"`
	ToServer   string `json:"toServer"`
	// Kind: "encrypted", "plain" or "local" (both tasks on one server).
	Kind  string `json:"kind"`
	Ports string `json:"ports"` // "tcp/5432"
}

// VerifyRun is one stored `corridor verify` run of an app. The server
// keeps the newest MaxVerifyRuns per app.
type VerifyRun struct {
	App string `json:"app"`
	// ID names the run (its time and a random tail); Time is when the
	// server stored it, By who posted it.
	ID         string    `json:"id"`
	Time       time.Time `json:"time"`
	By         string    `json:"by"`
	Checks     int       `json:"checks"`
	Passed     int       `json:"passed"`
	Failed     int       `json:"failed"`
	Incomplete int       `json:"incomplete"`
	// OK: every check ran and matched the policy.
	OK bool `json:"ok"`
	// Report is the verify report as `corridor verify -o json` prints it
	// (internal/verify.Report).
	Report json.RawMessage `json:"report,omitempty"`
}

// MaxVerifyRuns is how many verify runs the server keeps per app.
const MaxVerifyRuns = 20

// SignedReport is an evidence report (internal/report.Report) in its
// canonical JSON, as signed, with the control plane CA's signature.
type SignedReport struct {
	Report    json.RawMessage  `json:"report"`
	Signature *ReportSignature `json:"signature"`
}

// ReportSignature is the CA's signature of a report's canonical JSON.
type ReportSignature struct {
	Alg    string `json:"alg"`    // ecdsa-sha256 or ed25519
	Digest string `json:"digest"` // "sha256:" + hex of the canonical JSON
	Value  []byte `json:"value"`  // base64 in JSON
	// CA is the "sha256:" fingerprint of the DER of the CA certificate
	// whose key signed (informative: verify against the CA you trust).
	CA string `json:"ca"`
}

// ArtifactInfo is an artifact in the control plane's store.
type ArtifactInfo struct {
	SHA256 string    `json:"sha256"`
	Size   int64     `json:"size"`
	Stored time.Time `json:"stored"`
	// URL is what a class's guest.artifact.url names to use it.
	URL string `json:"url"`
}
