// Package report is Corridor's evidence report: what the control plane
// holds and saw about one app (the policy as applied, where each task runs
// and why, the path matrix and the live paths, the last verify run, key
// ages and rotations, the events of a period, the versions of server and
// agents), signed by the control plane's CA so that a later reader can
// check, offline and with the CA certificate alone, that it was not
// edited.
//
// The control plane builds the Report and signs its canonical JSON (the
// compact encoding/json output of Report, prefixed by SignContext). The
// HTML form is a pure function of the signed envelope: Verify renders it
// again from the envelope embedded in the file and compares every byte, so
// an edit anywhere in the file (the visible tables, the embedded JSON, the
// signature) makes the check fail.
package report

import (
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/verify"
)

// Format names this version of the report and of its HTML rendering.
const Format = "corridor-evidence-report/v1"

// Report is everything the evidence report says about one app.
type Report struct {
	Format      string       `json:"format"`
	App         string       `json:"app"`
	GeneratedAt time.Time    `json:"generatedAt"`
	Period      Period       `json:"period"`
	Control     ControlPlane `json:"controlPlane"`
	Policy      Policy       `json:"policy"`
	Tasks       []Task       `json:"tasks"`
	Matrix      []Cell       `json:"matrix"`
	Paths       []Path       `json:"paths"`
	// Verify is the app's last stored verify run; nil when none was run.
	Verify   *VerifyRun `json:"verify"`
	Keys     []Key      `json:"keys"`
	Events   []Event    `json:"events"`
	Versions Versions   `json:"versions"`
}

// Period is the time span whose events the report lists.
type Period struct {
	Since time.Time `json:"since"`
	Until time.Time `json:"until"`
}

// ControlPlane is the server that made the report.
type ControlPlane struct {
	ID      string `json:"id"`
	Version string `json:"version"`
	// CA is the "sha256:" fingerprint of the CA certificate (DER) whose
	// key signs the report.
	CA string `json:"ca"`
	// Revision is the etcd revision the report was read at.
	Revision int64 `json:"revision"`
}

// Policy is the app as applied.
type Policy struct {
	Revision int64 `json:"revision"`
	// Hash is "sha256:" + hex of the app spec's canonical JSON.
	Hash      string    `json:"hash"`
	Network   string    `json:"network,omitempty"`
	UpdatedBy string    `json:"updatedBy"`
	UpdatedAt time.Time `json:"updatedAt"`
	Spec      spec.App  `json:"spec"`
	Source    string    `json:"source,omitempty"`
	Notes     []string  `json:"notes,omitempty"`
}

// Task is where one task runs and why.
type Task struct {
	ID      string `json:"id"`
	Class   string `json:"class"`
	Server  string `json:"server"`
	Address string `json:"address"`
	// State is what its agent last reported (running, failed...), "" if
	// nothing yet.
	State  string `json:"state,omitempty"`
	Kept   bool   `json:"kept,omitempty"`
	Reason string `json:"reason"`
	// Rejected: why not the other servers, "server: why".
	Rejected []string `json:"rejected,omitempty"`
}

// Cell is one class pair of the path matrix: what the policy says.
type Cell struct {
	FromClass string `json:"fromClass"`
	ToClass   string `json:"toClass"`
	// Verdict: "encrypted", "plain" or "denied".
	Verdict string `json:"verdict"`
	Ports   string `json:"ports,omitempty"` // "tcp/5432 udp/53"
}

// Path is one path between two tasks with its live state.
type Path struct {
	From       string `json:"from"`
	To         string `json:"to"`
	FromClass  string `json:"fromClass"`
	ToClass    string `json:"toClass"`
	FromServer string `json:"fromServer"`
	ToServer   string `json:"toServer"`
	// Kind: "encrypted", "plain" or "local".
	Kind  string `json:"kind"`
	Ports string `json:"ports"`
	// HandshakeAge in seconds of the WireGuard peer that carries an
	// encrypted path, as the source host last reported (-1: none, or not
	// an encrypted path); RxBytes and TxBytes that peer's counters.
	HandshakeAge float64 `json:"handshakeAge"`
	RxBytes      int64   `json:"rxBytes,omitempty"`
	TxBytes      int64   `json:"txBytes,omitempty"`
}

// VerifyRun is the last verify run, with every check.
type VerifyRun struct {
	ID         string         `json:"id"`
	Time       time.Time      `json:"time"`
	By         string         `json:"by"`
	Started    time.Time      `json:"started,omitzero"`
	Finished   time.Time      `json:"finished,omitzero"`
	OK         bool           `json:"ok"`
	Passed     int            `json:"passed"`
	Failed     int            `json:"failed"`
	Incomplete int            `json:"incomplete"`
	Checks     []verify.Check `json:"checks"`
}

// Key is the WireGuard key of one server that runs tasks of the app.
type Key struct {
	Server    string `json:"server"`
	PublicKey string `json:"publicKey,omitempty"`
	// Generation is the key generation the control plane asks for;
	// Reported the one the agent last reported.
	Generation int64 `json:"generation"`
	Reported   int64 `json:"reported"`
	// Since is when the server joined or last rotated its key (from the
	// event log: the newest server.join or server.rotate-key event kept),
	// AgeSeconds the time from then to GeneratedAt; zero when the log no
	// longer holds it.
	Since      time.Time `json:"since,omitzero"`
	AgeSeconds float64   `json:"ageSeconds"`
	// Rotations are the rotations of the period (event times).
	Rotations []time.Time `json:"rotations,omitempty"`
}

// Event is one event of the period about the app or its servers.
type Event = api.Event

// Versions are the versions of the control plane and of the agents of the
// servers that run the app's tasks.
type Versions struct {
	Server string         `json:"server"`
	Agents []AgentVersion `json:"agents"`
}

// AgentVersion is one agent's version ("" when its agent predates
// reporting it) and when it last reported.
type AgentVersion struct {
	Server   string    `json:"server"`
	Version  string    `json:"version"`
	LastSeen time.Time `json:"lastSeen,omitzero"`
}
