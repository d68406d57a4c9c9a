// Command corridor is the single Corridor binary: server, agent, CLI, lab
// and demo. All logic lives in internal/cli and the packages it calls.
package main

import (
	"os"

	"github.com/corridor-dev/corridor/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
