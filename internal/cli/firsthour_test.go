package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/testnet"
)

// A typo in a script must fail: a group command given an unknown
// subcommand exits non-zero with a suggestion; alone it prints its help.
func TestUnknownSubcommandFails(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "app"}, `did you mean apps`},
		{[]string{"delete", "shop"}, `unknown command "shop" for "corridor delete"`},
		{[]string{"server", "rmove"}, `did you mean remove`},
		{[]string{"lab", "dwon"}, `did you mean down`},
		{[]string{"nosuch"}, `unknown command "nosuch"`},
	} {
		_, _, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("corridor %s: %v; want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	out, _, err := run(t, "get")
	if err != nil || !strings.Contains(out, "Available Commands") {
		t.Errorf("corridor get alone: %v, %q; want its help", err, out)
	}
}

func TestNegativeNumberIsExplained(t *testing.T) {
	_, _, err := run(t, "scale", "shop", "web", "-1")
	if err == nil || !strings.Contains(err.Error(), "negative number") {
		t.Fatalf("scale shop web -1: %v; want it to name the negative number", err)
	}
	_, _, err = run(t, "get", "apps", "--nosuch")
	if err == nil || !strings.Contains(err.Error(), "--help") {
		t.Fatalf("unknown flag: %v; want a pointer to --help", err)
	}
}

// Every command that talks to the server takes --server, --token and --ca.
func TestClientFlagsEverywhere(t *testing.T) {
	root := NewRoot(&bytes.Buffer{}, &bytes.Buffer{})
	for _, args := range [][]string{
		{"apply"}, {"delete", "app"}, {"describe", "app"}, {"describe", "task"}, {"get", "apps"}, {"get", "servers"},
		{"get", "tasks"}, {"get", "events"}, {"scale"}, {"verify"}, {"logs"},
		{"server", "remove"}, {"server", "rotate-key"}, {"server", "backup"},
	} {
		c, _, err := root.Find(args)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		for _, f := range []string{"server", "token", "ca"} {
			if c.Flags().Lookup(f) == nil {
				t.Errorf("corridor %s has no --%s", strings.Join(args, " "), f)
			}
		}
	}
}

// The banner of a server on a wildcard address with --advertise names the
// advertised host, and the login command it suggests works as printed.
func TestServerBannerAdvertises(t *testing.T) {
	t.Setenv("CORRIDOR_CONFIG", filepath.Join(t.TempDir(), "config.json"))
	t.Setenv("CORRIDOR_SERVER", "")
	t.Setenv("CORRIDOR_TOKEN", "")
	t.Setenv("CORRIDOR_CA", "")
	dir := t.TempDir()
	var stderr testnet.Buffer
	root := NewRoot(&bytes.Buffer{}, &stderr)
	root.SetArgs([]string{"server", "--data-dir", dir, "--listen", "0.0.0.0:0", "--advertise", "127.0.0.1", "--log-level", "error"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	defer func() { cancel(); <-done }()

	login := regexp.MustCompile(`log in with: corridor login --server (\S+) --token "\$\(cat (\S+)\)" --ca (\S+)`)
	var m []string
	for deadline := time.Now().Add(30 * time.Second); m == nil; {
		if m = login.FindStringSubmatch(stderr.String()); m == nil {
			if time.Now().After(deadline) {
				t.Fatalf("no login line in the banner:\n%s", stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if !strings.HasPrefix(m[1], "https://127.0.0.1:") {
		t.Fatalf("banner URL %s; want the advertised host\n%s", m[1], stderr.String())
	}
	if first := strings.SplitN(stderr.String(), "\n", 2)[0]; !strings.Contains(first, m[1]) {
		t.Errorf("first banner line %q does not name %s", first, m[1])
	}
	tok, err := os.ReadFile(m[2])
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	// Without logging in: the flags alone, --ca included.
	if _, errOut, err := run(t, "get", "servers", "--server", m[1], "--token", token, "--ca", m[3]); err != nil {
		t.Fatalf("get servers with --server/--token/--ca: %v %s", err, errOut)
	}
	if _, errOut, err := run(t, "login", "--server", m[1], "--token", token, "--ca", m[3]); err != nil {
		t.Fatalf("the banner's login command: %v %s", err, errOut)
	}
}
