package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// On a lab: `corridor plan` shows a scale-up's diff against the running
// control plane (exit 2) and nothing for the spec as applied (exit 0);
// `corridor verify shop` stores its run; `corridor report shop` writes a
// report naming that run whose signature checks offline with the CA, and
// a one-byte edit of the file makes the check fail.
func TestPlanAndReportOnLab(t *testing.T) {
	f := upFleet(t)
	f.apply(t, examples.Shop)
	f.settle(t, 5)
	bin := testnet.Binary(t, "plan", "report", "verify")
	tok, err := f.lab.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	corridor := func(args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "CORRIDOR_CONFIG="+filepath.Join(dir, "config.json"),
			"CORRIDOR_SERVER="+f.lab.ServerURL, "CORRIDOR_TOKEN="+tok, "CORRIDOR_CA="+f.lab.CAFile)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("corridor %v: %v", args, err)
		}
		return out.String(), errb.String(), code
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}

	same := write("shop.yaml", examples.Shop)
	if out, errOut, code := corridor("plan", "-f", same); code != 0 || !strings.Contains(errOut, "nothing would change") {
		t.Fatalf("plan of the spec as applied: exit %d\n%s\n%s", code, out, errOut)
	}
	scaled := bytes.Replace(examples.Shop, []byte("  - name: app\n    tasks: 2"), []byte("  - name: app\n    tasks: 3"), 1)
	if bytes.Equal(scaled, examples.Shop) {
		t.Fatal("could not scale the app class in examples/shop.yaml")
	}
	for _, args := range [][]string{{"plan", "-f", write("scaled.yaml", scaled)}, {"apply", "--dry-run", "-f", filepath.Join(dir, "scaled.yaml")}} {
		out, errOut, code := corridor(args...)
		if code != 2 {
			t.Fatalf("%v: exit %d, want 2 (changes)\n%s\n%s", args, code, out, errOut)
		}
		for _, want := range []string{"add     shop/app/2", "shop  web   app", "shop  app   db", "plain", "encrypted", "hosts touched:", "guests +shop/app/2"} {
			if !strings.Contains(out, want) {
				t.Errorf("%v: the diff lacks %q:\n%s", args, want, out)
			}
		}
		t.Logf("%v:\n%s%s", args, out, errOut)
	}
	if out, errOut, code := corridor("plan", "-f", same); code != 0 {
		t.Fatalf("a dry run changed something: exit %d\n%s\n%s", code, out, errOut)
	}

	out, errOut, code := corridor("verify", "shop")
	if code != 0 || !strings.Contains(errOut, "stored on the server") {
		t.Fatalf("verify shop: exit %d\n%s\n%s", code, out, errOut)
	}
	html, js := filepath.Join(dir, "shop.html"), filepath.Join(dir, "shop.json")
	if out, errOut, code := corridor("report", "shop", "--out", html); code != 0 {
		t.Fatalf("report shop: exit %d\n%s\n%s", code, out, errOut)
	}
	if out, errOut, code := corridor("report", "shop", "-o", "json", "--out", js); code != 0 {
		t.Fatalf("report shop -o json: exit %d\n%s\n%s", code, out, errOut)
	}
	page, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"every check matches the policy", "shop/db/0", "encrypted", "app.apply", "verify.run"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	for _, file := range []string{html, js} {
		out, errOut, code := corridor("report", "verify", file, "--ca", f.lab.CAFile)
		if code != 0 || !strings.Contains(out, "intact: report of app shop") {
			t.Fatalf("report verify %s: exit %d\n%s\n%s", file, code, out, errOut)
		}
		data, _ := os.ReadFile(file)
		i := bytes.Index(data, []byte("shop/db/0"))
		data[i+len("shop/db/")] = '9'
		edited := write("edited-"+filepath.Base(file), data)
		if out, errOut, code := corridor("report", "verify", edited, "--ca", f.lab.CAFile); code != 1 || !strings.Contains(errOut, "bad signature") {
			t.Errorf("report verify of a file with one byte edited: exit %d, want 1\n%s\n%s", code, out, errOut)
		}
	}
}
