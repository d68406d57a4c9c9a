package dist

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/corridor-dev/corridor/internal/testnet"
)

func TestMain(m *testing.M) {
	code := testnet.Main(m)
	if deb.dir != "" {
		os.RemoveAll(deb.dir)
	}
	os.Exit(code)
}

var deb struct {
	once sync.Once
	dir  string
	path string
	err  error
	out  []byte
}

// buildDeb builds the package once per test process, as `make dist` does:
// tools/dist run on the corridor binary and packaging/.
func buildDeb(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the Debian package (tools/dist): skipped with -short")
	}
	for _, tool := range []string{"dpkg-deb", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install dpkg (scripts/deps.sh)", tool)
		}
	}
	bin := testnet.Binary(t)
	deb.once.Do(func() {
		root, err := filepath.Abs("../..")
		if err != nil {
			deb.err = err
			return
		}
		if deb.dir, deb.err = os.MkdirTemp("", "cortst-dist-"); deb.err != nil {
			return
		}
		cmd := exec.Command("go", "run", ".", "--binary", bin, "--root", root, "--out", deb.dir)
		cmd.Dir = filepath.Join(root, "tools", "dist")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			deb.err, deb.out = err, stderr.Bytes()
			return
		}
		deb.path = strings.TrimSpace(string(out))
	})
	if deb.err != nil {
		t.Fatalf("building the package (tools/dist): %v\n%s", deb.err, deb.out)
	}
	return deb.path
}

func dpkgDeb(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The package holds the binary, both units, both configuration files (as
// conffiles), a man page per command and the maintainer scripts, and its
// control fields name it, its version and its architecture.
func TestDebContents(t *testing.T) {
	path := buildDeb(t)
	if want := "corridor_" + DebVersion("0.1.0-dev") + "_amd64.deb"; filepath.Base(path) != want && !strings.HasPrefix(filepath.Base(path), "corridor_") {
		t.Errorf("package file %s, want %s", filepath.Base(path), want)
	}
	listing := dpkgDeb(t, "-c", path)
	files := map[string]string{} // path -> mode
	for _, l := range strings.Split(strings.TrimSpace(listing), "\n") {
		f := strings.Fields(l)
		files[strings.TrimPrefix(f[len(f)-1], ".")] = f[0]
	}
	want := map[string]string{Binary: "-rwxr-xr-x"}
	for _, f := range Files {
		want[f.Dest] = "-rw-r--r--"
	}
	for _, page := range []string{"corridor.1.gz", "corridor-server.1.gz", "corridor-agent.1.gz", "corridor-verify.1.gz"} {
		want[ManDir+"/"+page] = "-rw-r--r--"
	}
	for p, mode := range want {
		if got, ok := files[p]; !ok {
			t.Errorf("package lacks %s:\n%s", p, listing)
		} else if got != mode {
			t.Errorf("%s has mode %s, want %s", p, got, mode)
		}
	}
	for p := range files {
		if strings.HasPrefix(p, StateDir) || strings.HasPrefix(p, "/var/") {
			t.Errorf("package ships %s: state is made by systemd at first start, never by the package", p)
		}
	}

	info := dpkgDeb(t, "-I", path)
	for _, field := range []string{"Package: corridor", "Architecture: amd64", "Version: 0.1.0~dev", "Section: net"} {
		if !strings.Contains(info, "\n "+field+"\n") {
			t.Errorf("control lacks %q:\n%s", field, info)
		}
	}
	if regexp.MustCompile(`\n Depends:`).MatchString(info) {
		t.Errorf("the binary is static: the package should depend on nothing:\n%s", info)
	}
	for _, script := range []string{PostInst, PreRm, PostRm} {
		if !regexp.MustCompile(`\s` + script + `\s+#!/bin/sh`).MatchString(info) {
			t.Errorf("control lacks the %s script:\n%s", script, info)
		}
	}
	ctrl := t.TempDir()
	dpkgDeb(t, "-e", path, ctrl)
	cf, err := os.ReadFile(filepath.Join(ctrl, "conffiles"))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(cf))
	slices.Sort(got)
	if want := []string{AgentConfig, ServerConfig}; !slices.Equal(got, want) {
		t.Errorf("conffiles %v, want %v", got, want)
	}

	// The man page is the command's --help, in roff.
	x := t.TempDir()
	dpkgDeb(t, "-x", path, x)
	out, err := exec.Command("sh", "-c", "zcat "+filepath.Join(x, ManDir, "corridor-agent.1.gz")).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), ".TH \"CORRIDOR\" \"1\"") || !strings.Contains(string(out), "--join-token-file") {
		t.Errorf("corridor-agent.1 is not the agent's help in roff:\n%.600s", out)
	}
}

// systemd-analyze verify accepts both units as installed by the package
// (in a root of their own: the binary must exist at ExecStart, the
// Documentation= man pages must be found), without a warning: an unknown
// or misspelt directive is a warning, and a failure here.
func TestUnitsVerify(t *testing.T) {
	path := buildDeb(t)
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not found: install the systemd package (scripts/deps.sh)")
	}
	root := t.TempDir()
	dpkgDeb(t, "-x", path, root)
	// The targets the units name (multi-user, network-online, sysinit...)
	// come from this machine's systemd.
	targets, _ := filepath.Glob("/usr/lib/systemd/system/*.target")
	if len(targets) == 0 {
		targets, _ = filepath.Glob("/lib/systemd/system/*.target")
	}
	if len(targets) == 0 {
		t.Fatal("no systemd targets on this machine: install the systemd package (scripts/deps.sh)")
	}
	for _, tg := range targets {
		b, err := os.ReadFile(tg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, UnitDir, filepath.Base(tg)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(sa, "verify", "--root="+root, ServerUnit, AgentUnit)
	cmd.Env = append(os.Environ(), "MANPATH="+filepath.Join(root, "usr/share/man"), "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}

	// The choices the comments explain, held: the agent shares the
	// machine's mount namespace and outlives its restarts' kills; the
	// server runs without privilege.
	agent := readUnit(t, filepath.Join(root, UnitDir, AgentUnit))
	for _, d := range []string{"KillMode=process", "Restart=always", "StateDirectory=corridor/agent", "NoNewPrivileges=yes"} {
		if !slices.Contains(agent, d) {
			t.Errorf("%s lacks %s", AgentUnit, d)
		}
	}
	for _, d := range agent {
		for _, ns := range []string{"ProtectSystem=", "ProtectHome=", "PrivateTmp=", "PrivateDevices=", "ReadWritePaths=", "ProtectKernelTunables=", "ProtectControlGroups=", "RestrictNamespaces=", "PrivateNetwork=", "MemoryDenyWriteExecute="} {
			if strings.HasPrefix(d, ns) {
				t.Errorf("%s sets %s: it would break the agent's work (see the unit's comments)", AgentUnit, d)
			}
		}
	}
	server := readUnit(t, filepath.Join(root, UnitDir, ServerUnit))
	for _, d := range []string{"DynamicUser=yes", "CapabilityBoundingSet=", "ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=corridor/server"} {
		if !slices.Contains(server, d) {
			t.Errorf("%s lacks %s", ServerUnit, d)
		}
	}
	for unit, lines := range map[string][]string{AgentUnit: agent, ServerUnit: server} {
		cfg := AgentConfig
		if unit == ServerUnit {
			cfg = ServerConfig
		}
		if !slices.ContainsFunc(lines, func(l string) bool {
			return l == "ExecStart="+Binary+" "+strings.TrimSuffix(strings.TrimPrefix(unit, "corridor-"), ".service")+" --config "+cfg
		}) {
			t.Errorf("%s does not start %s with --config %s", unit, Binary, cfg)
		}
	}
}

func readUnit(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// The default configuration files are read by the binary they ship with:
// every key is a flag of its command (an unknown key stops the service).
func TestDefaultConfigsParse(t *testing.T) {
	bin := testnet.Binary(t)
	root, _ := filepath.Abs("../..")
	for _, c := range []struct{ cmd, file string }{
		{"server", "server.yaml"},
		{"agent", "agent.yaml"},
	} {
		file := filepath.Join(root, SourceDir, c.file)
		// The file is applied before the command runs; the bad
		// --log-level (the command line wins) then stops it before it
		// does anything.
		cmd := exec.Command(bin, c.cmd, "--config", file, "--log-level", "bogus")
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), "--log-level") || strings.Contains(string(out), "bad configuration file") {
			t.Errorf("%s --config %s: the file is not accepted:\n%s", c.cmd, file, out)
		}
	}
}
