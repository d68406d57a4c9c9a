package spec

import (
	"strconv"
	"strings"
)

// The task environment: what the agent sets for every task program, on top
// of (and overriding nothing in) the class's own env, whose names may not
// start with EnvPrefix. docs/spec.md describes the contract.
const (
	EnvPrefix = "CORRIDOR_"
	EnvApp    = "CORRIDOR_APP"   // app name
	EnvClass  = "CORRIDOR_CLASS" // class name
	EnvTask   = "CORRIDOR_TASK"  // task ID, "<app>/<class>/<index>"
	EnvIndex  = "CORRIDOR_INDEX" // task index within its class, from 0
	EnvAddr   = "CORRIDOR_ADDR"  // the task's overlay address
	// EnvDataDir is a directory private to the task on its host, kept
	// across restarts of the program and removed with the task. The guest
	// runtime sets it, not the compiler: it is a host path.
	EnvDataDir = "CORRIDOR_DATA_DIR"
	// EnvPeersPrefix + PeersEnvSuffix(class): the "addr:port" list of the
	// tasks of a class this task may connect to.
	EnvPeersPrefix = "CORRIDOR_PEERS_"
)

// SelfProgram is the program name the agent resolves to its own binary, so
// that a spec can run the sample program shipped inside corridor.
const SelfProgram = "corridor"

// TaskID is the ID of task index of class in app: "<app>/<class>/<index>".
func TaskID(app, class string, index int) string {
	return app + "/" + class + "/" + strconv.Itoa(index)
}

// PeersEnvName is the variable listing the peers of class:
// CORRIDOR_PEERS_ and the class name upper-cased with '-' as '_'.
func PeersEnvName(class string) string {
	return EnvPeersPrefix + strings.ReplaceAll(strings.ToUpper(class), "-", "_")
}
