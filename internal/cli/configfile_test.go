package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --config on server and agent: the file's keys set the flags (a required
// flag given only in the file counts), an unknown key is an error naming
// file:line:column, and the command line wins.
func TestConfigFileFlags(t *testing.T) {
	dir := t.TempDir()
	file := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// An unknown key: refused before anything runs, with its position.
	bad := file("server.yaml", "listen: 127.0.0.1:0\ndata-dirr: /tmp/x\n")
	_, _, err := run(t, "server", "--config", bad)
	if err == nil || !strings.Contains(err.Error(), bad+":2:1: unknown key \"data-dirr\"") {
		t.Fatalf("server with an unknown key: %v", err)
	}
	// The required --data-dir given only in the file satisfies cobra, and
	// the file's log-level is taken (a bad one shows it was read).
	withDir := file("server2.yaml", "data-dir: "+filepath.Join(dir, "data")+"\nlog-level: loud\n")
	_, _, err = run(t, "server", "--config", withDir)
	if err == nil || strings.Contains(err.Error(), "required flag") || !strings.Contains(err.Error(), "--log-level") {
		t.Fatalf("server with data-dir from the file: %v", err)
	}
	// The command line wins over the file.
	_, _, err = run(t, "server", "--config", withDir, "--log-level", "loud2")
	if err == nil || !strings.Contains(err.Error(), "loud2") {
		t.Fatalf("server: the command line's --log-level did not win: %v", err)
	}
	// The agent reads its --server from the file (a bad scheme shows it).
	agentFile := file("agent.yaml", "server: [ftp://10.0.0.1:7443]\nstate-dir: "+filepath.Join(dir, "state")+"\n")
	_, _, err = run(t, "agent", "--config", agentFile)
	if err == nil || !strings.Contains(err.Error(), "ftp://10.0.0.1:7443") {
		t.Fatalf("agent with --server from the file: %v", err)
	}
	// cleanup is an action, never a setting.
	_, _, err = run(t, "agent", "--config", file("agent2.yaml", "cleanup: true\n"))
	if err == nil || !strings.Contains(err.Error(), ":1:1: \"cleanup\" cannot be set") {
		t.Fatalf("agent with cleanup in the file: %v", err)
	}
}
