// Package dist names what Corridor's Debian package installs and where: the
// one list that the package builder (tools/dist, `make dist`), its tests and
// docs/install.md agree on. The units and default configuration files
// themselves live in packaging/.
package dist

// Package is the Debian package's name.
const Package = "corridor"

// Paths on the installed system.
const (
	Binary       = "/usr/bin/corridor"
	UnitDir      = "/usr/lib/systemd/system"
	ServerUnit   = "corridor-server.service"
	AgentUnit    = "corridor-agent.service"
	ConfigDir    = "/etc/corridor"
	ServerConfig = ConfigDir + "/server.yaml"
	AgentConfig  = ConfigDir + "/agent.yaml"
	ManDir       = "/usr/share/man/man1"
	DocDir       = "/usr/share/doc/corridor"
	// StateDir is made by systemd (StateDirectory=) when a service first
	// starts, never by the package; removing or purging the package leaves
	// it (it holds the CA key, tokens and the agent's keys).
	StateDir       = "/var/lib/corridor"
	ServerStateDir = StateDir + "/server"
	AgentStateDir  = StateDir + "/agent"
)

// SourceDir holds the units, configuration files and maintainer scripts,
// relative to the repository's root.
const SourceDir = "packaging"

// Example is the sample app the package ships for docs/install.md.
const Example = DocDir + "/examples/shop.yaml"

// File is one file the package installs from the repository (besides the
// binary and the man pages, which are built).
type File struct {
	Source string // relative to the repository's root
	Dest   string
	Mode   uint32
	Config bool // a conffile: kept on remove, and never replaced when edited
}

// Files are the package's files taken from SourceDir.
var Files = []File{
	{Source: SourceDir + "/" + ServerUnit, Dest: UnitDir + "/" + ServerUnit, Mode: 0o644},
	{Source: SourceDir + "/" + AgentUnit, Dest: UnitDir + "/" + AgentUnit, Mode: 0o644},
	{Source: SourceDir + "/server.yaml", Dest: ServerConfig, Mode: 0o644, Config: true},
	{Source: SourceDir + "/agent.yaml", Dest: AgentConfig, Mode: 0o644, Config: true},
	{Source: "examples/shop.yaml", Dest: Example, Mode: 0o644},
	{Source: "docs/install.md", Dest: DocDir + "/install.md", Mode: 0o644},
}

// Maintainer scripts, in SourceDir. They touch nothing but systemd's
// view of the units (daemon-reload; disable and stop on remove), and
// nothing at all when DPKG_ROOT is set (an install into another root).
const (
	PostInst = "postinst"
	PreRm    = "prerm"
	PostRm   = "postrm"
)

// DebVersion turns a build version (internal/version, such as 0.1.0-dev)
// into a Debian version: a pre-release sorts before its release ("~").
func DebVersion(v string) string {
	out := []byte(v)
	if len(out) > 0 && out[0] == 'v' {
		out = out[1:]
	}
	for i, c := range out {
		if c == '-' {
			out[i] = '~'
		}
	}
	return string(out)
}
