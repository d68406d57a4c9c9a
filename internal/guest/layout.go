package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/corridor-dev/corridor/internal/atomicfile"
	"github.com/corridor-dev/corridor/internal/compile"
)

// The state layout of a guest runtime, owned here so that no other
// package re-declares it (the lab's cleanup reads records, the agent and
// `corridor logs --local` read logs):
//
//	<stateDir>/<Name(task)>/          TaskDir: one per task, removed with it
//	<stateDir>/<Name(task)>/guest.json RecordFile: what the guest was ensured as
//	<stateDir>/<Name(task)>/task.log   LogFile: the program's output (a VM's console)
//	<stateDir>/<Name(task)>/data/      DataDir: the program's CORRIDOR_DATA_DIR (netns)
//	<cgroup mount>/<parent>/<ScopedName(scope, task)> CgroupRel: the task's cgroup in each hierarchy
//
// The state directory is the agent's own, so TaskDir needs no scope; the
// cgroup and the network namespace are machine-wide and carry the
// agent's scope (ScopedName; Record.GuestName for guests made before).
//
// A runtime keeps its own further files in TaskDir (the netns runtime's
// pid.json, the VM runtime's vm.json, qemu.json and sockets). Every state
// file is written through internal/atomicfile (WriteJSON).
const (
	// RecordFile is the netns runtime's record of one guest.
	RecordFile = "guest.json"
	// LogFile is a task's log.
	LogFile = "task.log"
	// DataDirName is the task's private data directory in TaskDir.
	DataDirName = "data"
	// DefaultCgroupParent is the cgroup under which task cgroups live.
	DefaultCgroupParent = "corridor"
)

// TaskDir is the task's directory under the runtime's state directory.
func TaskDir(stateDir, task string) string {
	return filepath.Join(stateDir, Name(task))
}

// LogPath is where the stdout and stderr of task's program (a VM's
// serial console) are appended.
func LogPath(stateDir, task string) string {
	return filepath.Join(TaskDir(stateDir, task), LogFile)
}

// DataDir is the task's private data directory (CORRIDOR_DATA_DIR of a
// netns guest): inside its state directory, so that removing the task
// removes its data.
func DataDir(stateDir, task string) string {
	return filepath.Join(TaskDir(stateDir, task), DataDirName)
}

// CgroupRel is the directory of the cgroup of the guest named name
// (Record.GuestName, ScopedName), relative to each cgroup hierarchy's root.
func CgroupRel(parent, name string) string { return filepath.Join(parent, name) }

// Record is a runtime's record of one guest (RecordFile for netns, the
// VM runtime's vm.json): what it was last ensured as, so that List and
// Remove work after a restart without the desired state.
type Record struct {
	Task    string `json:"task"`
	Runtime string `json:"runtime"`
	// Netns is the name of the guest's network namespace (netns guests).
	Netns string `json:"netns,omitempty"`
	// Name is the guest's machine-wide name (ScopedName): its cgroup
	// directory and, after NetnsPrefix, its network namespace. Records of
	// agents before scopes have none (GuestName).
	Name  string        `json:"name,omitempty"`
	Guest compile.Guest `json:"guest"`
}

// GuestName is the machine-wide name the guest was made under: Name, or
// for a record written before scoped names, the unscoped name its
// namespace and cgroup then had. A guest keeps its name for its whole
// life: an agent upgraded to scoped names adopts its running guests under
// the names they were made with, and only guests it makes get scoped ones.
func (r Record) GuestName() string {
	if r.Name != "" {
		return r.Name
	}
	if n, ok := strings.CutPrefix(r.Netns, NetnsPrefix); ok && n != "" {
		return n
	}
	return Name(r.Task)
}

// GuestNameIn is the machine-wide name of task's guest for a runtime whose
// records (in files named file) are in stateDir and whose scope is scope:
// the recorded one (Record.GuestName) when the task has a record, the
// scoped one (ScopedName) for a guest not made yet.
func GuestNameIn(stateDir, file, scope, task string) string {
	if rec, err := ReadRecord(TaskDir(stateDir, task), file); err == nil && rec.Task == task {
		return rec.GuestName()
	}
	return ScopedName(scope, task)
}

// WriteJSON writes v as JSON to path, atomically.
func WriteJSON(path string, v any, indent bool) error {
	var b []byte
	var err error
	if indent {
		b, err = json.MarshalIndent(v, "", "  ")
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		return fmt.Errorf("guest: %s: %w", path, err)
	}
	return atomicfile.Write(path, b, 0o644)
}

// ReadJSON reads the JSON file at path into v.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("guest: %s: %w", path, err)
	}
	return nil
}

// ReadRecord reads the record file (RecordFile or a runtime's own) in a
// task directory.
func ReadRecord(dir, file string) (Record, error) {
	var rec Record
	err := ReadJSON(filepath.Join(dir, file), &rec)
	return rec, err
}

// Recorded is one guest record found in a state directory.
type Recorded struct {
	Record
	Dir string // the task's directory
}

// Records lists the guests of runtime recorded in stateDir (in files
// named file), sorted by task. Unreadable records and other runtimes'
// are skipped.
func Records(stateDir, file, runtime string) ([]Recorded, error) {
	ents, err := os.ReadDir(stateDir)
	if err != nil {
		return nil, fmt.Errorf("guest: list %s: %w", stateDir, err)
	}
	var out []Recorded
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(stateDir, e.Name())
		rec, err := ReadRecord(dir, file)
		if err != nil || rec.Runtime != runtime {
			continue
		}
		out = append(out, Recorded{Record: rec, Dir: dir})
	}
	slices.SortFunc(out, func(a, b Recorded) int { return strings.Compare(a.Task, b.Task) })
	return out, nil
}

// RecordGuest creates the task's directory under stateDir and writes its
// record there (in file) before any kernel object of the guest exists,
// so that a crash half-way leaves something List shows and Remove can
// clean. It returns the task's directory.
func RecordGuest(stateDir, file string, rec Record) (string, error) {
	dir := TaskDir(stateDir, rec.Task)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("guest %s: state dir: %w", rec.Task, err)
	}
	if err := WriteJSON(filepath.Join(dir, file), rec, true); err != nil {
		return "", fmt.Errorf("guest %s: %w", rec.Task, err)
	}
	return dir, nil
}

// RemoveState ends a runtime's Remove: when nothing before it failed
// (errs), the task's state directory goes and the removal is logged; a
// failure keeps the directory, so that a later Remove finds the guest
// again. It returns errs joined.
func RemoveState(task, dir string, errs []error, log *slog.Logger) error {
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("guest %s: remove state: %w", task, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log.Info("guest removed", "task", task)
	return nil
}
