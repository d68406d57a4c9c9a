package nsguest

import (
	"os"
	"path/filepath"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/spec"
)

// pidFile is the record of a task's running program (a guest.ProcRecord),
// in its task directory beside guest.RecordFile.
const pidFile = "pid.json"

func recordPath(dir string) string { return filepath.Join(dir, guest.RecordFile) }

// record is guest.json: what the guest is ensured as, so that List and
// Remove work after a restart without the desired state.
// name is the guest's machine-wide name (guest.Record.GuestName).
func record(g compile.Guest, name string) guest.Record {
	return guest.Record{Task: g.Task, Runtime: spec.RuntimeNetns, Netns: guest.NetnsPrefix + name, Name: name, Guest: g}
}

func writePidFile(dir string, rec guest.ProcRecord) error {
	return guest.WriteJSON(filepath.Join(dir, pidFile), rec, false)
}

func readPidFile(dir string) (guest.ProcRecord, error) {
	var rec guest.ProcRecord
	err := guest.ReadJSON(filepath.Join(dir, pidFile), &rec)
	return rec, err
}

func removePidFile(dir string) { os.Remove(filepath.Join(dir, pidFile)) }
