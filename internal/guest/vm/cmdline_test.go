package vm

import (
	"encoding/base64"
	"os/exec"
	"strings"
	"testing"

	"net/netip"
)

func TestTaskScriptQuoting(t *testing.T) {
	argv := []string{"sh", "-c", `printf '%s|%s|%s\n' "$GREETING" "$HOME" "$1"`, "x", "it's"}
	env := map[string]string{"GREETING": `a 'quoted' $value`, "HOME": "/root"}
	s, err := taskScript(argv, env)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	out, err := exec.Command(sh, "-c", s).CombinedOutput()
	if err != nil {
		t.Fatalf("script failed: %v: %s\n%s", err, out, s)
	}
	if got, want := string(out), "a 'quoted' $value|/root|it's\n"; got != want {
		t.Fatalf("output %q, want %q", got, want)
	}
	if _, err := taskScript(argv, map[string]string{"BAD-NAME": "x"}); err == nil || !strings.Contains(err.Error(), "BAD-NAME") {
		t.Fatalf("bad env name: %v", err)
	}
	if _, err := taskScript(nil, nil); err == nil {
		t.Fatal("empty command accepted")
	}
}

func TestCmdline(t *testing.T) {
	p := bootParams{Addr: netip.MustParseAddr("100.64.0.5"), Gateway: "169.254.1.1", GwMAC: hostMAC("a/b/0"), MTU: 1420,
		Argv: []string{"corridor", "sample", "db"}, Env: map[string]string{"CORRIDOR_TASK": "a/b/0"}}
	cl, err := p.cmdline()
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, f := range strings.Fields(cl) {
		k, v, _ := strings.Cut(f, "=")
		fields[k] = v
	}
	for k, want := range map[string]string{"corridor.addr": "100.64.0.5", "corridor.gw": "169.254.1.1", "corridor.mtu": "1420", "corridor.gwmac": hostMAC("a/b/0").String(), "console": "ttyS0"} {
		if fields[k] != want {
			t.Errorf("%s=%q, want %q (cmdline %q)", k, fields[k], want, cl)
		}
	}
	script, err := base64.StdEncoding.DecodeString(fields["corridor.cmd"])
	if err != nil || !strings.Contains(string(script), "exec 'corridor' 'sample' 'db'") || !strings.Contains(string(script), "export CORRIDOR_TASK='a/b/0'") {
		t.Fatalf("corridor.cmd decodes to %q, %v", script, err)
	}
	if _, ok := fields["corridor.dns"]; ok {
		t.Errorf("corridor.dns with no resolvers: %q", cl)
	}
	p.Resolvers = []netip.Addr{netip.MustParseAddr("198.18.0.253"), netip.MustParseAddr("203.0.113.53")}
	if cl, err = p.cmdline(); err != nil || !strings.Contains(" "+cl+" ", " corridor.dns=198.18.0.253,203.0.113.53 ") {
		t.Errorf("resolvers not on the command line: %q, %v", cl, err)
	}
	p.Resolvers = nil
	p.Env = map[string]string{"BIG": strings.Repeat("x", 3000)}
	if _, err := p.cmdline(); err == nil || !strings.Contains(err.Error(), "spec.env") {
		t.Fatalf("oversized command line: %v", err)
	}
}

func TestMACsStable(t *testing.T) {
	first, again := hostMAC("a/b/0"), hostMAC("a/b/0")
	if first.String() != again.String() || first.String() == hostMAC("a/b/1").String() {
		t.Fatal("host MAC not stable per task")
	}
	if m := guestMAC("a/b/0"); m[0] != 0x52 || len(m) != 6 {
		t.Fatalf("guest MAC %s", m)
	}
	if m := hostMAC("x"); m[0]&0x02 == 0 || m[0]&0x01 != 0 {
		t.Fatalf("host MAC %s is not locally administered unicast", m)
	}
}
