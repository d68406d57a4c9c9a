package lab

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Defaults of Options.
const (
	DefaultServers    = 3
	DefaultPrefix     = "corlab-"
	DefaultMTU        = 1500
	DefaultServerPort = 7443
	DefaultAgentPort  = 7444
)

// DefaultUnderlay is the lab's underlay subnet when none is given.
var DefaultUnderlay = netip.MustParsePrefix("198.18.0.0/24")

// maxIfName is the kernel's limit on interface names (IFNAMSIZ-1).
const maxIfName = 15

// Options say what lab Up makes. Zero fields take the defaults.
type Options struct {
	// Dir holds lab.json, the server's data, the agents' state and logs.
	Dir string
	// Servers is how many simulated servers (s1..sN) to make.
	Servers int
	// Prefix starts every namespace name ("corlab-" gives corlab-ul,
	// corlab-s1...) and, without its trailing '-', the root link's name
	// ("corlab0"). Two labs on one machine need two prefixes.
	Prefix string
	// Underlay is the subnet of the underlay bridge: the root link takes
	// the first address (.1), server i takes the tenth after it plus i.
	Underlay netip.Prefix
	MTU      int
	// Binary is the corridor executable to run; empty: this executable.
	Binary string
	// Force removes a lab already up in Dir before making the new one.
	Force      bool
	ServerPort int
	AgentPort  int
	// ReadyTimeout bounds the wait for the server's /readyz, JoinTimeout
	// the wait for every agent to join.
	ReadyTimeout time.Duration
	JoinTimeout  time.Duration
	// AgentArgs are added to every agent's command line.
	AgentArgs []string
	// ServerArgs are added to the control plane's command line (kept in
	// lab.json: a restarted server gets them again).
	ServerArgs []string
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
	// Hosts is what each server is: HostsNetns (default, a namespace) or
	// HostsVM (a QEMU VM with a kernel of its own, configured by VM).
	Hosts string
	VM    VMOptions
}

// withDefaults fills zero fields and checks the rest. Errors name the
// field.
func (o Options) withDefaults() (Options, error) {
	if o.Dir == "" {
		o.Dir = DefaultDir()
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return o, fmt.Errorf("lab: dir %q: %w", o.Dir, err)
	}
	o.Dir = abs
	if o.Servers == 0 {
		o.Servers = DefaultServers
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if !o.Underlay.IsValid() {
		o.Underlay = DefaultUnderlay
	}
	if o.MTU == 0 {
		o.MTU = DefaultMTU
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return o, fmt.Errorf("lab: binary: cannot find this executable (%w); give --binary", err)
		}
		o.Binary = exe
	}
	if o.Binary, err = filepath.Abs(o.Binary); err != nil {
		return o, fmt.Errorf("lab: binary %q: %w", o.Binary, err)
	}
	if o.ServerPort == 0 {
		o.ServerPort = DefaultServerPort
	}
	if o.AgentPort == 0 {
		o.AgentPort = DefaultAgentPort
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	if o.JoinTimeout == 0 {
		o.JoinTimeout = 90 * time.Second
		if o.Hosts == HostsVM {
			// TCG boots on a busy machine take minutes.
			o.JoinTimeout = 10 * time.Minute
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	switch o.Hosts {
	case "", HostsNetns:
		o.Hosts = HostsNetns
	case HostsVM:
		if o.VM, err = o.VM.withDefaults(); err != nil {
			return o, err
		}
		for _, n := range o.VM.WireGuardGo {
			if i, err := strconv.Atoi(strings.TrimPrefix(n, "s")); err != nil || !strings.HasPrefix(n, "s") || i < 1 || i > o.Servers {
				return o, fmt.Errorf("lab: wireguard-go host %q: not a server of this lab (s1..s%d)", n, o.Servers)
			}
		}
	default:
		return o, fmt.Errorf("lab: hosts: %q: use %s or %s", o.Hosts, HostsNetns, HostsVM)
	}

	if o.Servers < 1 || o.Servers > 200 {
		return o, fmt.Errorf("lab: servers: %d is out of range 1..200", o.Servers)
	}
	if err := checkPrefix(o.Prefix); err != nil {
		return o, err
	}
	if !o.Underlay.Addr().Is4() {
		return o, fmt.Errorf("lab: underlay: %s is not an IPv4 subnet", o.Underlay)
	}
	o.Underlay = o.Underlay.Masked()
	// The last server address must stay below the broadcast address.
	if last := serverAddr(o.Underlay, o.Servers); !o.Underlay.Contains(last) || last == broadcast(o.Underlay) {
		return o, fmt.Errorf("lab: underlay: %s has no room for %d servers (server i takes .%d+i)", o.Underlay, o.Servers, firstServerOffset)
	}
	if o.MTU < 1280 || o.MTU > 9000 {
		return o, fmt.Errorf("lab: mtu: %d is out of range 1280..9000", o.MTU)
	}
	if o.ServerPort < 1 || o.ServerPort > 65535 {
		return o, fmt.Errorf("lab: server port: %d is out of range", o.ServerPort)
	}
	if o.AgentPort < 1 || o.AgentPort > 65535 {
		return o, fmt.Errorf("lab: agent port: %d is out of range", o.AgentPort)
	}
	st, err := os.Stat(o.Binary)
	if err != nil {
		return o, fmt.Errorf("lab: binary: %w", err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return o, fmt.Errorf("lab: binary: %s is not an executable file", o.Binary)
	}
	return o, nil
}

// checkPrefix accepts prefixes that start with "cor" (our kernel objects
// carry it), hold only lower-case letters, digits and '-', and leave room
// for the longest interface name derived from them.
func checkPrefix(p string) error {
	if !strings.HasPrefix(p, "cor") {
		return fmt.Errorf("lab: prefix: %q must start with \"cor\"", p)
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("lab: prefix: %q may hold only a-z, 0-9 and '-'", p)
		}
	}
	// The longest name derived from the prefix is a WireGuard device
	// name: base + "w" + up to three digits.
	if n := len(base(p)) + 4; n > maxIfName {
		return fmt.Errorf("lab: prefix: %q is too long: device names derived from it would exceed %d characters", p, maxIfName)
	}
	return nil
}

// firstServerOffset: server i has the underlay address first+offset+i,
// which leaves .1 to .10 to the root link and future lab services.
const firstServerOffset = 10

// base is the prefix without its trailing dashes.
func base(prefix string) string { return strings.TrimRight(prefix, "-") }

// Names of the lab's objects, all derived from the prefix.
func underlayNamespace(prefix string) string { return prefix + "ul" }
func serverName(i int) string                { return "s" + strconv.Itoa(i) }
func serverNamespace(prefix string, i int) string {
	return prefix + serverName(i)
}
func rootLink(prefix string) string { return base(prefix) + "0" }

// wireGuardName is unique on the machine for a given prefix: wireguard-go
// keeps its UAPI sockets in one machine-wide directory.
func wireGuardName(prefix string, i int) string { return base(prefix) + "w" + strconv.Itoa(i) }

// Fixed names inside the lab's own namespaces; the namespace keeps them
// apart from anything else on the machine.
const (
	bridgeName   = "corbr0"
	rootPeerName = "cor-root" // underlay-namespace end of the root link
	serverIface  = "eth0"     // server-namespace end of its veth
)

func bridgePort(i int) string { return "cor-" + serverName(i) }

func rootAddr(p netip.Prefix) netip.Addr { return nth(p, 1) }
func serverAddr(p netip.Prefix, i int) netip.Addr {
	return nth(p, firstServerOffset+i)
}

func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func broadcast(p netip.Prefix) netip.Addr {
	return nth(p, (1<<(32-p.Bits()))-1)
}

// zone is the zone label of server i: a, b, c... so that placement has
// zones to spread over.
func zone(i int) string {
	const letters = "abcdefghijklmnopqrstuvwxyz"
	return string(letters[(i-1)%len(letters)])
}
