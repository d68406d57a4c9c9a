// Package api holds the wire types of Corridor's HTTP/JSON API (/v1),
// shared by the server, the agent and the CLI, and a small client for it.
package api

import (
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
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

// JoinResponse carries the agent's client certificate and the CA that
// signs the server's certificate.
type JoinResponse struct {
	Certificate string `json:"certificate"` // PEM
	CA          string `json:"ca"`          // PEM
}

// DesiredState is a host's desired state at a revision. Revision only
// grows, and changes only when State does.
type DesiredState struct {
	Revision int64             `json:"revision"`
	State    compile.HostState `json:"state"`
}

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
}

// PeerStatus is the live state of one WireGuard peer of corw0.
type PeerStatus struct {
	Server        string    `json:"server"`
	LastHandshake time.Time `json:"lastHandshake,omitempty"`
	RxBytes       int64     `json:"rxBytes"`
	TxBytes       int64     `json:"txBytes"`
}

// DropCount is the firewall's drop counter for one app and class pair.
type DropCount struct {
	App       string `json:"app"`
	FromClass string `json:"fromClass"`
	ToClass   string `json:"toClass"`
	Packets   int64  `json:"packets"`
}

// Status is an agent's heartbeat and status report.
type Status struct {
	Name            string            `json:"name"`
	Address         string            `json:"address"`
	PublicKey       string            `json:"publicKey"`
	WireGuardPort   int               `json:"wireguardPort,omitempty"`
	Capacity        spec.Resources    `json:"capacity"`
	Labels          map[string]string `json:"labels,omitempty"`
	AppliedRevision int64             `json:"appliedRevision"`
	Tasks           []TaskStatus      `json:"tasks,omitempty"`
	Peers           []PeerStatus      `json:"peers,omitempty"`
	Drops           []DropCount       `json:"drops,omitempty"`
	// Errors from the last reconcile, if any.
	Errors []string  `json:"errors,omitempty"`
	Time   time.Time `json:"time"`
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
	MarkerSeen bool   `json:"markerSeen"`
	Error      string `json:"error,omitempty"`
}
