package flagfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

type flags struct {
	fs      *pflag.FlagSet
	server  []string
	name    string
	timeout time.Duration
	port    int
	user    bool
	labels  map[string]string
}

func newFlags(t *testing.T, args ...string) *flags {
	t.Helper()
	f := &flags{fs: pflag.NewFlagSet("agent", pflag.ContinueOnError)}
	f.fs.StringSliceVar(&f.server, "server", nil, "")
	f.fs.StringVar(&f.name, "name", "", "")
	f.fs.DurationVar(&f.timeout, "join-timeout", time.Minute, "")
	f.fs.IntVar(&f.port, "wireguard-port", 51820, "")
	f.fs.BoolVar(&f.user, "wireguard-userspace", false, "")
	f.fs.StringToStringVar(&f.labels, "labels", nil, "")
	f.fs.String(Flag, "", "")
	f.fs.Bool("cleanup", false, "")
	if err := f.fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return f
}

func write(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestApplySetsFlagsFromFile(t *testing.T) {
	p := write(t, `# comment
server: [https://10.0.0.1:7443, https://10.0.0.2:7443]
name: s1
join-timeout: 30s
wireguard-port: 51821
wireguard-userspace: true
labels: {zone: a, rack: r1}
`)
	f := newFlags(t)
	if err := Apply(f.fs, p, "cleanup"); err != nil {
		t.Fatal(err)
	}
	if strings.Join(f.server, " ") != "https://10.0.0.1:7443 https://10.0.0.2:7443" || f.name != "s1" ||
		f.timeout != 30*time.Second || f.port != 51821 || !f.user || f.labels["zone"] != "a" || f.labels["rack"] != "r1" {
		t.Fatalf("flags not set from the file: %+v", f)
	}
}

func TestCommandLineWins(t *testing.T) {
	p := write(t, "name: from-file\nwireguard-port: 1\nserver: [https://a:1]\n")
	f := newFlags(t, "--name", "from-cli", "--server", "https://b:2")
	if err := Apply(f.fs, p); err != nil {
		t.Fatal(err)
	}
	if f.name != "from-cli" || len(f.server) != 1 || f.server[0] != "https://b:2" {
		t.Fatalf("command line lost to the file: name %q server %v", f.name, f.server)
	}
	if f.port != 1 {
		t.Fatalf("a flag the command line did not give was not taken from the file: %d", f.port)
	}
}

func TestBadFileNamesLineAndChangesNothing(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"name: s1\nservre: https://x\n", ":2:1: unknown key \"servre\""},
		{"name: s1\nwireguard-port: many\n", ":2:17: wireguard-port"},
		{"name: s1\njoin-timeout: 3 days\n", ":2:15: join-timeout"},
		{"name: s1\nname: s2\n", ":2:1: key \"name\" given twice"},
		{"cleanup: true\n", ":1:1: \"cleanup\" cannot be set"},
		{"config: other.yaml\n", ":1:1: \"config\" cannot be set"},
		{"- a\n- b\n", ":1:1: want a mapping"},
		{"name:\n", ":1:6: name: no value"},
		{"labels: {zone: [a]}\n", ":1:9: labels"},
		{"name: [a, [b]]\n", ":1:7: name"},
	} {
		p := write(t, c.text)
		f := newFlags(t)
		err := Apply(f.fs, p, "cleanup")
		if err == nil || !errors.Is(err, ErrBadFile) || !strings.Contains(err.Error(), p+c.want) {
			t.Errorf("%q: got %v, want an error with %q", c.text, err, p+c.want)
			continue
		}
		if f.name != "" || f.fs.Lookup("name").Changed {
			t.Errorf("%q: a bad file set a flag: name %q", c.text, f.name)
		}
	}
}

func TestEmptyFileAndMissingFile(t *testing.T) {
	f := newFlags(t)
	if err := Apply(f.fs, write(t, "# nothing yet\n")); err != nil {
		t.Fatalf("a file of comments only: %v", err)
	}
	err := Apply(f.fs, filepath.Join(t.TempDir(), "none.yaml"))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("missing file: %v", err)
	}
}
