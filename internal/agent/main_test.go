package agent_test

import (
	"os"
	"testing"

	"github.com/corridor-dev/corridor/internal/testnet"
)

// TestMain removes the corridor binary that privileged tests build
// (testnet.Binary).
func TestMain(m *testing.M) { os.Exit(testnet.Main(m)) }
