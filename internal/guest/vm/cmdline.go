package vm

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/corridor-dev/corridor/internal/guest"
)

// MaxCmdline is the most the guest kernel takes on its command line
// (COMMAND_LINE_SIZE on x86 is 2048, minus room for what QEMU adds).
const MaxCmdline = 2000

// bootParams is what the host tells the guest init on the kernel
// command line: the contract of docs/guests.md.
type bootParams struct {
	Addr    netip.Addr
	Gateway string
	GwMAC   net.HardwareAddr
	MTU     int
	Argv    []string
	Env     map[string]string
	// Root is set for a disk-image guest ("/dev/vda").
	Root string
	// Resolvers are the task's DNS servers (hoststate.Guest.Resolvers):
	// the init writes them to /etc/resolv.conf.
	Resolvers []netip.Addr
}

// cmdline renders the kernel command line.
func (p bootParams) cmdline() (string, error) {
	script, err := taskScript(p.Argv, p.Env)
	if err != nil {
		return "", err
	}
	parts := []string{"console=ttyS0", "quiet", "panic=-1", "reboot=t"}
	if p.Root != "" {
		parts = append(parts, "root="+p.Root, "rw")
	}
	parts = append(parts,
		"corridor.addr="+p.Addr.String(),
		"corridor.gw="+p.Gateway,
	)
	if len(p.GwMAC) > 0 {
		parts = append(parts, "corridor.gwmac="+p.GwMAC.String())
	}
	if len(p.Resolvers) > 0 {
		dns := make([]string, len(p.Resolvers))
		for i, a := range p.Resolvers {
			dns[i] = a.String()
		}
		parts = append(parts, "corridor.dns="+strings.Join(dns, ","))
	}
	parts = append(parts,
		fmt.Sprintf("corridor.mtu=%d", p.MTU),
		"corridor.cmd="+base64.StdEncoding.EncodeToString([]byte(script)),
	)
	s := strings.Join(parts, " ")
	if len(s) > MaxCmdline {
		return "", fmt.Errorf("kernel command line is %d bytes, the guest takes at most %d: shorten spec.command or spec.env", len(s), MaxCmdline)
	}
	return s, nil
}

// taskScript is the sh script the guest init runs: the environment,
// then exec of the command. Every word is single-quoted, so nothing in
// it is expanded by the guest's shell.
func taskScript(argv []string, env map[string]string) (string, error) {
	if len(argv) == 0 || argv[0] == "" {
		return "", fmt.Errorf("spec.command is empty")
	}
	full := map[string]string{"PATH": guest.DefaultPath, "HOME": "/"}
	for k, v := range env {
		full[k] = v
	}
	keys := make([]string, 0, len(full))
	for k := range full {
		if !isShellName(k) {
			return "", fmt.Errorf("env %q: a VM guest takes only names of letters, digits and '_' (not starting with a digit)", k)
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(full[k]))
	}
	b.WriteString("exec")
	for _, a := range argv {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return b.String(), nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func isShellName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
