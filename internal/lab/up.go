package lab

import (
	"context"
	"errors"
	"fmt"
	"github.com/corridor-dev/corridor/internal/hostns"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/corridor-dev/corridor/internal/vmhost"
)

// Files the control plane keeps in its data directory (see
// internal/server).
const (
	adminTokenFile = "admin.token"
	joinTokenFile  = "join.token"
	caFile         = "ca.crt"
)

// Up makes a lab as opts say and returns it once every agent has joined.
// On failure it leaves what it made in place, recorded in lab.json, so
// that the logs can be read; Down removes it.
func Up(ctx context.Context, opts Options) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: up needs root (it makes network namespaces and links): run it with sudo")
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	log := o.Logger
	if err := prepareDir(ctx, o); err != nil {
		return nil, err
	}
	if err := checkConflicts(o); err != nil {
		return nil, err
	}

	l := newLab(o)
	if o.Hosts == HostsVM {
		// The image first: a missing package or kernel fails before
		// anything is made (a cached image costs nothing).
		log.Info("building the VM host image", "package", o.VM.Package)
		if _, err := vmImage(ctx, o); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{l.Dir, filepath.Join(l.Dir, "logs"), filepath.Join(l.Dir, "bin"), l.ServerDataDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
	}
	// The lab runs its own copy of the binary: `go run` deletes its build
	// when it exits, and a rebuilt bin/corridor must not change a running
	// lab under its feet (task restarts, cleanup).
	bin := filepath.Join(l.Dir, "bin", "corridor")
	if err := copyExecutable(o.Binary, bin); err != nil {
		return nil, err
	}
	l.Binary = bin
	if err := l.save(); err != nil {
		return nil, err
	}

	log.Info("making the underlay", "namespace", l.UnderlayNamespace, "subnet", l.Underlay)
	if err := l.makeUnderlay(); err != nil {
		return l, err
	}
	for i := range l.Servers {
		s := &l.Servers[i]
		if s.IsVM() {
			log.Info("making VM host tap", "server", s.Name, "tap", s.VM.Tap, "address", s.Address)
			if err := l.makeVMTap(s); err != nil {
				return l, err
			}
			continue
		}
		log.Info("making server namespace", "server", s.Name, "namespace", s.Namespace, "address", s.Address)
		if err := l.makeServer(s); err != nil {
			return l, err
		}
	}
	if err := l.makeRootLink(); err != nil {
		return l, err
	}
	log.Info("starting the outside service", "namespace", outsideNamespace(l.Prefix), "addresses", outsideAddrs(l.Underlay))
	if err := l.makeOutside(); err != nil {
		return l, err
	}
	log.Info("making the outside client", "namespace", clientNamespace(l.Prefix), "allowed", ClientAllowed, "denied", ClientDenied)
	if err := l.makeClient(); err != nil {
		return l, err
	}

	log.Info("starting the control plane", "url", l.ServerURL, "log", l.controlLog())
	if err := l.startControl(ctx, o); err != nil {
		return l, err
	}
	for i := range l.Servers {
		s := &l.Servers[i]
		if s.IsVM() {
			continue
		}
		log.Info("starting agent", "server", s.Name, "log", s.Log)
		if err := l.startAgent(s, o); err != nil {
			return l, err
		}
	}
	if l.Hosts == HostsVM {
		log.Info("powering on the VM hosts", "servers", len(l.Servers))
		if err := l.startVMs(ctx, o); err != nil {
			return l, err
		}
	}
	if err := l.waitJoined(ctx, o.JoinTimeout); err != nil {
		return l, err
	}
	l.Phase = PhaseUp
	if err := l.save(); err != nil {
		return l, err
	}
	log.Info("lab is up", "servers", len(l.Servers), "dir", l.Dir)
	return l, nil
}

// prepareDir refuses a directory holding a live lab (unless Force), and
// removes the remains of a dead one, so that Up starts from nothing.
func prepareDir(ctx context.Context, o Options) error {
	old, err := Load(o.Dir)
	switch {
	case errors.Is(err, ErrNoLab):
		return nil
	case err != nil:
		return err
	}
	if old.anythingLeft() && !o.Force {
		return fmt.Errorf("%w: %s (remove it with `corridor lab down --dir %s`, or give --force to recreate it)", ErrExists, o.Dir, o.Dir)
	}
	o.Logger.Info("removing the previous lab", "dir", o.Dir)
	return Down(ctx, DownOptions{Dir: o.Dir, Logger: o.Logger})
}

// anythingLeft reports whether any namespace, root link or process of the
// lab still exists.
func (l *Lab) anythingLeft() bool {
	for _, ns := range l.allNamespaces() {
		if hostns.Exists(ns) {
			return true
		}
	}
	for _, link := range l.RootLinks {
		if rootLinkExists(link) {
			return true
		}
	}
	for _, p := range l.processes() {
		if alive(&p) {
			return true
		}
	}
	return false
}

// checkConflicts refuses names and addresses that something else on the
// machine (often another lab with the same prefix) already uses.
func checkConflicts(o Options) error {
	names := []string{underlayNamespace(o.Prefix), outsideNamespace(o.Prefix), clientNamespace(o.Prefix)}
	for i := 1; i <= o.Servers; i++ {
		names = append(names, serverNamespace(o.Prefix, i))
	}
	for _, ns := range names {
		if hostns.Exists(ns) {
			return fmt.Errorf("lab: namespace %s already exists and is not this lab's (another lab with prefix %q? give another --prefix, or remove it with `ip netns del %s`)", ns, o.Prefix, ns)
		}
	}
	if link := rootLink(o.Prefix); rootLinkExists(link) {
		return fmt.Errorf("lab: link %s already exists in the root namespace (another lab with prefix %q? give another --prefix)", link, o.Prefix)
	}
	if what, ok := rootOverlap(o.Underlay); ok {
		return fmt.Errorf("lab: underlay: %s overlaps %s already in the root namespace: give another --underlay", o.Underlay, what)
	}
	return nil
}

// newLab lays out every name and address of the lab; nothing is made yet.
func newLab(o Options) *Lab {
	ra := rootAddr(o.Underlay)
	data := filepath.Join(o.Dir, "server")
	l := &Lab{
		Version:           stateVersion,
		Phase:             PhaseCreating,
		Dir:               o.Dir,
		Prefix:            o.Prefix,
		Underlay:          o.Underlay,
		MTU:               o.MTU,
		Binary:            o.Binary,
		Created:           time.Now().UTC().Truncate(time.Second),
		UnderlayNamespace: underlayNamespace(o.Prefix),
		Bridge:            bridgeName,
		RootLink:          rootLink(o.Prefix),
		RootAddress:       ra,
		ServerURL:         "https://" + net.JoinHostPort(ra.String(), strconv.Itoa(o.ServerPort)),
		ServerDataDir:     data,
		AdminTokenFile:    filepath.Join(data, adminTokenFile),
		JoinTokenFile:     filepath.Join(data, joinTokenFile),
		CAFile:            filepath.Join(data, caFile),
		Namespaces:        []string{},
		RootLinks:         []string{},
		ServerArgs:        o.ServerArgs,
		Hosts:             o.Hosts,
	}
	for i := 1; i <= o.Servers; i++ {
		name := serverName(i)
		addr := serverAddr(o.Underlay, i)
		l.Servers = append(l.Servers, Server{
			Name:          name,
			Namespace:     serverNamespace(o.Prefix, i),
			Address:       addr,
			BridgePort:    bridgePort(i),
			Labels:        map[string]string{"zone": zone(i)},
			StateDir:      filepath.Join(o.Dir, name),
			WireGuardName: wireGuardName(o.Prefix, i),
			Listen:        net.JoinHostPort(addr.String(), strconv.Itoa(o.AgentPort)),
			Log:           filepath.Join(o.Dir, "logs", "agent-"+name+".log"),
		})
		if o.Hosts == HostsVM {
			layoutVM(&l.Servers[i-1], i, o)
		}
	}
	return l
}

func (l *Lab) controlLog() string { return filepath.Join(l.Dir, "logs", "server.log") }

func (l *Lab) makeUnderlay() error {
	if err := l.addNamespace(l.UnderlayNamespace); err != nil {
		return err
	}
	if err := hostns.Create(l.UnderlayNamespace); err != nil {
		return err
	}
	h, err := openNamespace(l.UnderlayNamespace)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := makeBridge(h, l.Bridge, l.MTU); err != nil {
		return err
	}
	// The underlay namespace is the servers' default gateway, as a real
	// network's router would be; it forwards nothing, so what a server
	// sends there (a packet that escaped every guard of its data plane)
	// is dropped after crossing the underlay in plain, where captures see
	// it, instead of dying unseen in the server's main table. It counts
	// what it drops (gateway.go).
	if err := addAddress(h, l.Bridge, gatewayAddr(l.Underlay), l.Underlay); err != nil {
		return err
	}
	if err := makeGatewayCounter(l.UnderlayNamespace, l.Underlay); err != nil {
		return err
	}
	return setSysctl(l.UnderlayNamespace, "net.ipv4.ip_forward", "0")
}

// gatewayAddr is the lab servers' default gateway on the underlay: the
// underlay namespace's bridge (.2, in the range reserved for lab services).
func gatewayAddr(p netip.Prefix) netip.Addr { return nth(p, 2) }

func (l *Lab) makeServer(s *Server) error {
	if err := l.addNamespace(s.Namespace); err != nil {
		return err
	}
	if err := hostns.Create(s.Namespace); err != nil {
		return err
	}
	ul, err := openNamespace(l.UnderlayNamespace)
	if err != nil {
		return err
	}
	defer ul.Close()
	sh, err := openNamespace(s.Namespace)
	if err != nil {
		return err
	}
	defer sh.Close()
	// Both ends live in lab namespaces, which go away with the namespace:
	// nothing to record beyond the namespace itself.
	if err := makeVeth(ul, s.BridgePort, l.Bridge, sh, serverIface, l.MTU); err != nil {
		return err
	}
	if err := linkUp(sh, "lo"); err != nil {
		return err
	}
	if err := addAddress(sh, serverIface, s.Address, l.Underlay); err != nil {
		return err
	}
	if err := setSysctl(s.Namespace, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	// A default route through the underlay, as a real server has: see
	// makeUnderlay.
	link, err := sh.LinkByName(serverIface)
	if err != nil {
		return fmt.Errorf("lab: link %s: %w", serverIface, err)
	}
	def := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gatewayAddr(l.Underlay).AsSlice()}
	if err := sh.RouteReplace(def); err != nil {
		return fmt.Errorf("lab: default route of %s via %s: %w", s.Name, gatewayAddr(l.Underlay), err)
	}
	return os.MkdirAll(s.StateDir, 0o700)
}

// makeRootLink plugs the root namespace into the underlay bridge, so that
// the control plane (in the root namespace) and the user's CLI reach the
// servers.
func (l *Lab) makeRootLink() error {
	if err := l.addRootLink(l.RootLink); err != nil {
		return err
	}
	root, err := openNamespace("")
	if err != nil {
		return err
	}
	defer root.Close()
	ul, err := openNamespace(l.UnderlayNamespace)
	if err != nil {
		return err
	}
	defer ul.Close()
	// Made from the underlay side, with the peer created directly in the
	// root namespace under its final name.
	if err := makeVeth(ul, rootPeerName, l.Bridge, root, l.RootLink, l.MTU); err != nil {
		return err
	}
	return addAddress(root, l.RootLink, l.RootAddress, l.Underlay)
}

func (l *Lab) controlArgs() []string {
	return append([]string{l.Binary, "server",
		"--data-dir", l.ServerDataDir,
		"--listen", strings.TrimPrefix(l.ServerURL, "https://"),
	}, l.ServerArgs...)
}

func (l *Lab) startControl(ctx context.Context, o Options) error {
	p, err := spawn(RoleServer, "server", "", l.controlLog(), l.controlArgs())
	if p != nil {
		l.Control = p
		if serr := l.save(); serr != nil {
			return serr
		}
	}
	if err != nil {
		return err
	}
	return l.waitReady(ctx, o.ReadyTimeout)
}

func (l *Lab) agentArgs(s *Server, o Options) []string {
	args := []string{l.Binary, "agent",
		"--server", l.ServerURL,
		"--join-token-file", l.JoinTokenFile,
		"--ca", l.CAFile,
		"--name", s.Name,
		"--guest-scope", s.GuestScope(),
		"--state-dir", s.StateDir,
		"--underlay-iface", serverIface,
		"--wg-name", s.WireGuardName,
		"--listen", s.Listen,
	}
	keys := make([]string, 0, len(s.Labels))
	for k := range s.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--label", k+"="+s.Labels[k])
	}
	return append(args, o.AgentArgs...)
}

func (l *Lab) startAgent(s *Server, o Options) error {
	p, err := spawn(RoleAgent, s.Name, s.Namespace, s.Log, l.agentArgs(s, o))
	if p != nil {
		s.Agent = p
		if serr := l.save(); serr != nil {
			return serr
		}
	}
	return err
}

// waitReady waits for the control plane's /readyz. It gives up early when
// the server process has exited, pointing at its log.
func (l *Lab) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if !alive(l.Control) {
			return fmt.Errorf("lab: the control plane exited; last lines of %s:\n%s", l.controlLog(), tail(l.controlLog(), 20))
		}
		if last = l.ready(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab: the control plane at %s is not ready after %s (%v); last lines of %s:\n%s", l.ServerURL, timeout, last, l.controlLog(), tail(l.controlLog(), 20))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitJoined waits until every server of the lab is listed by the control
// plane. On timeout the error names the agents missing, with their logs.
func (l *Lab) waitJoined(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	var missing []*Server
	for {
		joined, err := l.joined(ctx)
		last = err
		missing = missing[:0]
		for i := range l.Servers {
			if !joined[l.Servers[i].Name] {
				missing = append(missing, &l.Servers[i])
			}
		}
		if err == nil && len(missing) == 0 {
			return nil
		}
		for _, s := range missing {
			if s.IsVM() {
				if !alive(s.VM.QEMU) {
					return fmt.Errorf("lab: the VM of %s is off (QEMU exited: %s); last lines of its console %s:\n%s", s.Name,
						strings.TrimSpace(tail(filepath.Join(s.VM.Dir, "qemu.log"), 3)), s.Log, tail(s.Log, 20))
				}
				if n := vmhost.ConsoleCount(s.VM.Console, s.VM.ConsoleOffset, vmhost.AgentExitLine); n >= crashLooping {
					return fmt.Errorf("lab: the agent of VM host %s exited %d times since it booted; last lines of its console %s:\n%s", s.Name, n, s.Log, tail(s.Log, 20))
				}
				continue
			}
			if !alive(s.Agent) {
				return fmt.Errorf("lab: the agent of %s exited; last lines of %s:\n%s", s.Name, s.Log, tail(s.Log, 20))
			}
		}
		select {
		case <-ctx.Done():
			var b strings.Builder
			fmt.Fprintf(&b, "lab: not every agent joined after %s", timeout)
			if last != nil {
				fmt.Fprintf(&b, " (listing servers: %v)", last)
			}
			for _, s := range missing {
				fmt.Fprintf(&b, "\n%s has not joined; last lines of %s:\n%s", s.Name, s.Log, tail(s.Log, 10))
			}
			return errors.New(b.String())
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// tail returns the last n lines of a file, indented, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "    (" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return "    (empty)"
	}
	return "    " + strings.Join(lines, "\n    ")
}

// Env is the environment that points the corridor CLI at the lab.
func (l *Lab) Env() ([]string, error) {
	tok, err := l.AdminToken()
	if err != nil {
		return nil, err
	}
	return []string{
		"CORRIDOR_SERVER=" + l.ServerURL,
		"CORRIDOR_TOKEN=" + tok,
		"CORRIDOR_CA=" + l.CAFile,
	}, nil
}

// ServerAddrs are the underlay addresses of the lab's servers, by name.
func (l *Lab) ServerAddrs() map[string]netip.Addr {
	m := make(map[string]netip.Addr, len(l.Servers))
	for _, s := range l.Servers {
		m[s.Name] = s.Address
	}
	return m
}

// copyExecutable copies the executable src to dst (mode 0755), through a
// temporary file so that a running copy is never overwritten in place.
func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("lab: binary: %w", err)
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return fmt.Errorf("lab: binary: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("lab: copy binary: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("lab: copy binary: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("lab: binary: %w", err)
	}
	return nil
}
