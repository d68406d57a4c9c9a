// Package lab makes and removes a Corridor fleet on one machine out of
// network namespaces: an underlay bridge in its own namespace, one
// namespace per simulated server with a veth on that bridge, a veth from
// the root namespace so that the CLI reaches the control plane, one
// `corridor server` in the root namespace and one `corridor agent` per
// server namespace.
//
// Everything the lab makes is recorded in DIR/lab.json before it is made,
// so that Down can remove a lab that crashed half-way through Up, and can
// be run any number of times.
package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// StateFile is the name of the lab's record in its directory.
const StateFile = "lab.json"

// stateVersion is the version of lab.json's format.
const stateVersion = 1

// Phases of a lab as recorded in lab.json.
const (
	PhaseCreating = "creating" // Up is running, or crashed before it finished
	PhaseUp       = "up"       // every agent joined
)

// Roles of the lab's processes.
const (
	RoleServer = "server" // corridor server (the control plane)
	RoleAgent  = "agent"
)

// ErrNoLab is returned by Load when the directory holds no lab.
var ErrNoLab = errors.New("lab: no lab in this directory")

// ErrExists is returned by Up when a lab is already up in the directory.
var ErrExists = errors.New("lab: a lab is already up in this directory")

// Lab is a lab as recorded in DIR/lab.json. Callers (demo, verify, e2e
// tests) read it to reach the fleet; Down reads it to remove the fleet.
type Lab struct {
	Version int    `json:"version"`
	Phase   string `json:"phase"`
	// Dir is the lab's directory (absolute).
	Dir string `json:"dir"`
	// Prefix starts the name of every namespace and root link the lab makes.
	Prefix   string       `json:"prefix"`
	Underlay netip.Prefix `json:"underlay"`
	MTU      int          `json:"mtu"`
	// Binary is the corridor executable the lab runs.
	Binary  string    `json:"binary"`
	Created time.Time `json:"created"`

	// UnderlayNamespace holds the bridge every server namespace and the
	// root link are plugged into.
	UnderlayNamespace string `json:"underlayNamespace"`
	Bridge            string `json:"bridge"`
	// RootLink is the root-namespace end of the veth to the bridge;
	// RootAddress is its address, on which the control plane listens.
	RootLink    string     `json:"rootLink"`
	RootAddress netip.Addr `json:"rootAddress"`

	// ServerURL is the control plane's API base URL.
	ServerURL      string   `json:"serverURL"`
	ServerDataDir  string   `json:"serverDataDir"`
	AdminTokenFile string   `json:"adminTokenFile"`
	JoinTokenFile  string   `json:"joinTokenFile"`
	CAFile         string   `json:"caFile"`
	Control        *Process `json:"control,omitempty"`
	// ServerArgs are extra arguments of the control plane (Options).
	ServerArgs []string `json:"serverArgs,omitempty"`

	Servers []Server `json:"servers"`

	// Namespaces are the named network namespaces the lab made or is
	// about to make (recorded before creation). GuestNamespaces are
	// namespaces the lab's agents made and Down found still linked to a
	// server namespace; they are recorded so that a second Down still
	// removes them once their veth is gone.
	Namespaces      []string `json:"namespaces"`
	GuestNamespaces []string `json:"guestNamespaces,omitempty"`
	// RootLinks are links in the root namespace the lab made.
	RootLinks []string `json:"rootLinks"`

	// Outside is the outside service on the underlay (outside.go).
	Outside *Outside `json:"outside,omitempty"`
	// OutsideClient is the outside client on the underlay (client.go).
	OutsideClient *Client `json:"outsideClient,omitempty"`

	// Hosts is what the servers are: "netns" (or empty) or "vm"
	// (vmhosts.go). VMImage, VMQEMU and VMMemory are what VM hosts boot,
	// VMAgentConfig the extra keys of their agent.yaml.
	Hosts    string `json:"hosts,omitempty"`
	VMImage  string `json:"vmImage,omitempty"`
	VMQEMU   string `json:"vmQEMU,omitempty"`
	VMMemory int    `json:"vmMemory,omitempty"`

	VMAgentConfig map[string]string `json:"vmAgentConfig,omitempty"`
}

// Server is one simulated server: a namespace plugged into the underlay
// bridge, with an agent in it.
type Server struct {
	Name      string     `json:"name"`
	Namespace string     `json:"namespace"`
	Address   netip.Addr `json:"address"`
	// BridgePort is the underlay-namespace end of the server's veth; the
	// server's end is always "eth0".
	BridgePort string            `json:"bridgePort"`
	Labels     map[string]string `json:"labels,omitempty"`
	StateDir   string            `json:"stateDir"`
	// WireGuardName names the server's WireGuard device, unique on the
	// machine because wireguard-go's UAPI socket directory is shared.
	WireGuardName string   `json:"wireguardName"`
	Listen        string   `json:"listen"`
	Log           string   `json:"log"`
	Agent         *Process `json:"agent,omitempty"`
	// VM is set when the server is a VM host (vmhosts.go): then it has no
	// Namespace nor Agent process here (the agent runs inside the VM),
	// and Log is the VM's console.
	VM *VMHost `json:"vm,omitempty"`
}

// Process is a process the lab started. StartTime (clock ticks since boot,
// from /proc/<pid>/stat) tells it apart from a later process that reused
// its PID.
type Process struct {
	Role      string   `json:"role"`
	Name      string   `json:"name"`
	PID       int      `json:"pid"`
	StartTime uint64   `json:"startTime"`
	Args      []string `json:"args"`
	Namespace string   `json:"namespace,omitempty"` // "" is the root namespace
	Log       string   `json:"log"`
}

// DefaultDir is the lab directory when none is given: $CORRIDOR_LAB_DIR,
// else /var/lib/corridor/lab.
func DefaultDir() string {
	if d := os.Getenv("CORRIDOR_LAB_DIR"); d != "" {
		return d
	}
	return "/var/lib/corridor/lab"
}

// Load reads the lab recorded in dir. It returns an error wrapping ErrNoLab
// when dir holds no lab.json.
func Load(dir string) (*Lab, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("lab: directory %q: %w", dir, err)
	}
	b, err := os.ReadFile(filepath.Join(abs, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s has no %s", ErrNoLab, abs, StateFile)
	}
	if err != nil {
		return nil, fmt.Errorf("lab: read state: %w", err)
	}
	var l Lab
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("lab: %s is damaged (%w); remove what is left with `corridor lab down --dir %s --prefix <prefix>`", filepath.Join(abs, StateFile), err, abs)
	}
	if l.Version != stateVersion {
		return nil, fmt.Errorf("lab: %s has format version %d, this binary reads %d", filepath.Join(abs, StateFile), l.Version, stateVersion)
	}
	if l.Dir == "" {
		l.Dir = abs
	}
	return &l, nil
}

// save writes the record atomically (temporary file, then rename), so that
// a crash never leaves a half-written lab.json behind.
func (l *Lab) save() error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return fmt.Errorf("lab: encode state: %w", err)
	}
	path := filepath.Join(l.Dir, StateFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("lab: write state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("lab: write state: %w", err)
	}
	return nil
}

// addNamespace records a namespace before it is made.
func (l *Lab) addNamespace(name string) error {
	if !contains(l.Namespaces, name) {
		l.Namespaces = append(l.Namespaces, name)
	}
	return l.save()
}

// addRootLink records a root-namespace link before it is made.
func (l *Lab) addRootLink(name string) error {
	if !contains(l.RootLinks, name) {
		l.RootLinks = append(l.RootLinks, name)
	}
	return l.save()
}

// Server returns the server of that name, or nil.
func (l *Lab) Server(name string) *Server {
	for i := range l.Servers {
		if l.Servers[i].Name == name {
			return &l.Servers[i]
		}
	}
	return nil
}

// AdminToken reads the control plane's admin token.
func (l *Lab) AdminToken() (string, error) {
	b, err := os.ReadFile(l.AdminTokenFile)
	if err != nil {
		return "", fmt.Errorf("lab: admin token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// allNamespaces is every named namespace of the lab: made or found.
func (l *Lab) allNamespaces() []string {
	out := append([]string(nil), l.Namespaces...)
	for _, g := range l.GuestNamespaces {
		if !contains(out, g) {
			out = append(out, g)
		}
	}
	return out
}

// processes is every process the lab recorded starting.
func (l *Lab) processes() []Process {
	var out []Process
	for _, s := range l.Servers {
		if s.Agent != nil {
			out = append(out, *s.Agent)
		}
		if s.VM != nil && s.VM.QEMU != nil {
			out = append(out, *s.VM.QEMU)
		}
	}
	if l.Control != nil {
		out = append(out, *l.Control)
	}
	if l.Outside != nil && l.Outside.Process != nil {
		out = append(out, *l.Outside.Process)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
