package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/corridor-dev/corridor/internal/atomicfile"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// DesiredFile is where the last desired state received from the server is
// kept, so that the agent serves it again after a restart while the server
// is away (fail static). It holds a hoststate.Desired as JSON; a file
// written before states carried a schema is of schema 1.0 and loads.
const DesiredFile = "desired.json"

// SaveDesired writes ds to dir/desired.json atomically and durably: a crash
// at any point leaves either the old file or the new one, never a torn one.
func SaveDesired(dir string, ds hoststate.Desired) error {
	b, err := json.MarshalIndent(ds, "", "  ")
	if err != nil {
		return fmt.Errorf("encode desired state: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, DesiredFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save desired state: %w", err)
	}
	return nil
}

// LoadDesired reads dir/desired.json. ok is false when there is none. It
// does not validate: the agent validates every state before it applies it
// (a state of a newer major schema, left by a newer agent, is refused
// there).
func LoadDesired(dir string) (ds hoststate.Desired, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, DesiredFile))
	if errors.Is(err, fs.ErrNotExist) {
		return ds, false, nil
	}
	if err != nil {
		return ds, false, fmt.Errorf("read desired state: %w", err)
	}
	if err := json.Unmarshal(b, &ds); err != nil {
		return ds, false, fmt.Errorf("decode %s: %w", filepath.Join(dir, DesiredFile), err)
	}
	return ds, true, nil
}
