package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/corridor-dev/corridor/internal/atomicfile"
)

// HostFile, in the state directory, records what the agent makes on the
// host under names its flags chose, written at every start, so that
// `corridor agent --cleanup --state-dir DIR` finds them again without the
// flags.
const HostFile = "host.json"

// HostRecord is the content of HostFile.
type HostRecord struct {
	// WireGuardName is the WireGuard device (and the name of its
	// wireguard-go process's PID file in the state directory).
	WireGuardName string `json:"wireguardName"`
	// Underlay is the underlay interface the agent used.
	Underlay string `json:"underlay,omitempty"`
	// CgroupParent is the cgroup, in every hierarchy, under which the
	// guests' cgroups live.
	CgroupParent string `json:"cgroupParent,omitempty"`
	// NetNS is the agent's network namespace ("net:[4026532...]"): cleanup
	// must run in the same one to find the devices.
	NetNS string `json:"netns,omitempty"`
}

// SaveHostRecord writes r to dir's HostFile.
func SaveHostRecord(dir string, r HostRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, HostFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("record the agent's device names: %w", err)
	}
	return nil
}

// LoadHostRecord reads dir's HostFile; ok is false when there is none (a
// state directory of an agent older than the record).
func LoadHostRecord(dir string) (r HostRecord, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, HostFile))
	if errors.Is(err, fs.ErrNotExist) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("read %s: %w", HostFile, err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, false, fmt.Errorf("decode %s: %w", filepath.Join(dir, HostFile), err)
	}
	return r, true, nil
}

// currentNetNS names this thread's network namespace, or "".
func currentNetNS() string {
	s, _ := os.Readlink("/proc/thread-self/ns/net")
	return s
}
