// Package spec defines Corridor's app and server specs: the types an
// operator writes in YAML, their strict decoding (unknown fields are errors,
// every error names file, line and field) and their validation.
//
// The types here are the input of the compiler (internal/compile), the body
// of the server's apply API and the files that `corridor plan` reads.
package spec

import "time"

// APIVersion is the only document version this build understands.
const APIVersion = "corridor/v1"

// Document kinds.
const (
	KindApp     = "App"
	KindServers = "ServerList"
)

// Guest runtimes.
const (
	RuntimeNetns = "netns"
	RuntimeVM    = "vm"
)

// Protocols a rule or port may name.
const (
	ProtoTCP = "tcp"
	ProtoUDP = "udp"
)

// App is one piece of business software: its task classes and the rules
// between them. It is the unit of deployment and of isolation.
type App struct {
	APIVersion string `yaml:"apiVersion" json:"apiVersion"`
	Kind       string `yaml:"kind" json:"kind"`
	Name       string `yaml:"name" json:"name"`
	// Network is the app's overlay CIDR (IPv4). Empty: the server allocates
	// one from its pool, never overlapping another app's.
	Network string  `yaml:"network,omitempty" json:"network,omitempty"`
	Classes []Class `yaml:"classes" json:"classes"`
	Rules   []Rule  `yaml:"rules,omitempty" json:"rules,omitempty"`
	// Egress lets classes open connections to named destinations outside
	// Corridor, through their own host's underlay (see egress.go).
	Egress []Egress `yaml:"egress,omitempty" json:"egress,omitempty"`
	// Resolvers are the DNS servers (IPv4 addresses, outside Corridor) the
	// app's guests get in /etc/resolv.conf; every class may reach them on
	// port 53, udp and tcp.
	Resolvers []string `yaml:"resolvers,omitempty" json:"resolvers,omitempty"`
	// Exports offer ports of a class to other apps as named services, and
	// Imports take such services in as destinations of this app's rules
	// (see services.go): app to app, with consent on both sides.
	Exports []Export `yaml:"exports,omitempty" json:"exports,omitempty"`
	Imports []Import `yaml:"imports,omitempty" json:"imports,omitempty"`
}

// Class is a task class: what its tasks run, with what resources, how many.
type Class struct {
	Name      string    `yaml:"name" json:"name"`
	Tasks     int       `yaml:"tasks" json:"tasks"`
	Guest     Guest     `yaml:"guest" json:"guest"`
	Resources Resources `yaml:"resources" json:"resources"`
	// Ports the class serves (informational for the environment contract;
	// rules decide what is reachable).
	Ports     []Port    `yaml:"ports,omitempty" json:"ports,omitempty"`
	Placement Placement `yaml:"placement,omitempty" json:"placement,omitempty"`
	// Publish makes class ports reachable from clients outside Corridor
	// through entry hosts (see publish.go).
	Publish []Publish `yaml:"publish,omitempty" json:"publish,omitempty"`
}

// Guest says what a task runs in and what it runs.
type Guest struct {
	Runtime string            `yaml:"runtime" json:"runtime"`
	Command []string          `yaml:"command" json:"command"`
	Env     map[string]string `yaml:"env,omitempty" json:"env,omitempty"`
	// VM only: a kernel and initrd, or a disk image.
	Kernel string `yaml:"kernel,omitempty" json:"kernel,omitempty"`
	Initrd string `yaml:"initrd,omitempty" json:"initrd,omitempty"`
	Image  string `yaml:"image,omitempty" json:"image,omitempty"`
	VCPUs  int    `yaml:"vcpus,omitempty" json:"vcpus,omitempty"`
	// netns only: the numeric user the program runs as, "UID" or
	// "UID:GID" (GID defaults to UID). Empty: an unprivileged ID the
	// agent derives from the task (docs/guests.md). Never 0.
	User string `yaml:"user,omitempty" json:"user,omitempty"`
	// netns only: allow raw and packet sockets (the program keeps
	// CAP_NET_RAW, in its own network namespace). Default false.
	NetRaw bool `yaml:"netRaw,omitempty" json:"netRaw,omitempty"`
	// Artifact, instead of Command, names a program the agent fetches,
	// checks against its hash and runs; for runtime vm, instead of
	// Kernel, Initrd and Image, the guest's boot image (see artifact.go).
	Artifact Artifact `yaml:"artifact,omitempty" json:"artifact,omitzero"`
}

// Resources a task reserves on its server. In YAML, cpu is "500m", "2" or
// 1.5 and memory is "256Mi", "1Gi", "512M" or a byte count.
type Resources struct {
	CPU    MilliCPU `yaml:"cpu" json:"cpu"`
	Memory Bytes    `yaml:"memory" json:"memory"`
	// Pids bounds the processes and threads of a task (its cgroup's pids
	// limit); 0 means DefaultPids. Not a server capacity.
	Pids int `yaml:"pids,omitempty" json:"pids,omitempty"`
}

// MilliCPU is thousandths of a CPU.
type MilliCPU int64

// Bytes is a size in bytes.
type Bytes int64

// Port is a port a class serves.
type Port struct {
	Name     string `yaml:"name,omitempty" json:"name,omitempty"`
	Port     int    `yaml:"port" json:"port"`
	Protocol string `yaml:"protocol,omitempty" json:"protocol,omitempty"` // default tcp
}

// Placement constrains where a class's tasks may run.
type Placement struct {
	// Labels a server must carry (all of them) to host a task of the class.
	Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	// SpreadBy names a server label (such as zone): after the method's
	// spread rule (a server with no task of the app yet comes first), tasks
	// of the class go to the label value with fewest tasks of the class.
	SpreadBy string `yaml:"spreadBy,omitempty" json:"spreadBy,omitempty"`
}

// Rule allows a path: tasks of From open connections to tasks of To on
// Ports; replies flow back. No rule, no path. Encrypt applies to the class
// pair as a whole: every rule between two classes, either way, must agree.
type Rule struct {
	From     string `yaml:"from" json:"from"`
	To       string `yaml:"to" json:"to"`
	Ports    []int  `yaml:"ports" json:"ports"`
	Protocol string `yaml:"protocol,omitempty" json:"protocol,omitempty"` // default tcp
	Encrypt  bool   `yaml:"encrypt" json:"encrypt"`
}

// ServerList is a file of servers, for `corridor plan --servers`.
type ServerList struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Servers    []Server `yaml:"servers" json:"servers"`
}

// Server states.
const (
	ServerReady    = "ready"    // takes new tasks
	ServerDraining = "draining" // keeps its tasks, takes no new ones
	ServerDown     = "down"     // gone: its tasks are placed elsewhere
)

// Server is a machine that runs `corridor agent`.
type Server struct {
	Name string `yaml:"name" json:"name"`
	// Address is the underlay IP address (IPv4 or IPv6).
	Address   string            `yaml:"address" json:"address"`
	Capacity  Resources         `yaml:"capacity" json:"capacity"`
	Labels    map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	PublicKey string            `yaml:"publicKey,omitempty" json:"publicKey,omitempty"` // WireGuard, base64
	// WireGuardPort is the UDP port of the server's corw0 (default 51820).
	WireGuardPort int    `yaml:"wireguardPort,omitempty" json:"wireguardPort,omitempty"`
	State         string `yaml:"state,omitempty" json:"state,omitempty"` // default ready
	// KeyGeneration counts the WireGuard key rotations asked of the
	// server (`corridor server rotate-key`). The agent makes a new key
	// pair when its host's desired state carries a generation above the
	// one its key was made for.
	KeyGeneration int64 `yaml:"keyGeneration,omitempty" json:"keyGeneration,omitempty"`
	// Rotation is the hitless key rotation under way on this server, as
	// the control plane drives it (never read from a file): kept with the
	// server record so that a control plane that stops mid-rotation
	// resumes it where it was.
	Rotation *KeyRotation `yaml:"-" json:"rotation,omitempty"`
}

// Phases of a hitless key rotation as the control plane runs it
// (KeyRotation.Phase; docs/architecture.md, "Hitless key rotation").
const (
	// RotationPrepare: the host is asked for its next key (its state's
	// keyGeneration); it makes it and reports the public half.
	RotationPrepare = "prepare"
	// RotationAnnounce: the peers hold the next key beside the current
	// one and move their routes to the second device.
	RotationAnnounce = "announce"
	// RotationCommit: the next key is the server's key (PublicKey); every
	// side moves its routes back to the first device.
	RotationCommit = "commit"
	// RotationClear: the rotation is over; the second devices go.
	RotationClear = "clear"
)

// KeyRotation is one hitless WireGuard key rotation of a server.
type KeyRotation struct {
	// Generation is the key generation being made.
	Generation int64  `json:"generation"`
	Phase      string `json:"phase"`
	// NextPublicKey is the public half of the next key, as the host
	// reported it (the private half never leaves the host).
	NextPublicKey string `json:"nextPublicKey,omitempty"`
	// PreviousPublicKey is the key being replaced.
	PreviousPublicKey string    `json:"previousPublicKey,omitempty"`
	Started           time.Time `json:"started"`
	// PhaseSince is when Phase began.
	PhaseSince time.Time `json:"phaseSince"`
}
