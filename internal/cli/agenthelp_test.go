package cli

import (
	"strings"
	"testing"
)

// agent --help: every flag's value name is a word (pflag takes back-quoted
// text in a usage as the value name), and the lab example names the lab
// server's address (198.18.0.1).
func TestAgentHelp(t *testing.T) {
	out, _, err := run(t, "agent", "--help")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "--vm-image corridor") {
		t.Errorf("--vm-image renders a command as its value name:\n%s", out)
	}
	// A flag line: "  -x, --name TYPE   usage"; TYPE is one word.
	_, flags, _ := strings.Cut(out, "\nFlags:\n")
	for _, l := range strings.Split(flags, "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "-") {
			continue
		}
		head, _, _ := strings.Cut(l, "  ")
		f := strings.Fields(head)
		if strings.HasSuffix(f[0], ",") {
			f = f[1:]
		}
		if len(f) > 2 {
			t.Errorf("flag with a value name of several words: %q", l)
		}
	}
	if strings.Contains(out, "198.18.0.254") || !strings.Contains(out, "https://198.18.0.1:7443") {
		t.Errorf("the lab example does not use the lab server's address 198.18.0.1:\n%s", out)
	}
	if !strings.Contains(out, "--join-timeout") {
		t.Errorf("agent --help has no --join-timeout")
	}
}
