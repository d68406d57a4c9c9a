package spec

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Limits and defaults of the spec.
const (
	MaxTasks               = 1000    // tasks of one class
	MaxAppTasks            = 10000   // tasks of all classes of one app
	MaxClasses             = 100     // classes of one app
	MaxRules               = 1000    // rules of one app
	MinMemory        Bytes = 4 << 20 // a task below this cannot start a program
	MaxNameLen             = 32      // app and class names
	MaxVCPUs               = 64
	MaxEnvNameLen          = 256
	MaxServerNameLen       = 63
	// DefaultPids is a task's pids limit (processes and threads) when
	// resources.pids is left out; MinPids and MaxPids bound it.
	DefaultPids = 1024
	MinPids     = 16
	MaxPids     = 1 << 20

	// DefaultWireGuardPort is the UDP port of a server's corw0 when its
	// spec names none (the same as compile.DefaultWireGuardPort).
	DefaultWireGuardPort = 51820
)

// SetAppDefaults fills in what an app may leave out: protocol tcp on
// ports and rules. DecodeApps calls it; callers that receive an App some
// other way (JSON) call it before handing the app on.
func SetAppDefaults(a *App) {
	for i := range a.Classes {
		for j := range a.Classes[i].Ports {
			a.Classes[i].Ports[j].Protocol = Protocol(a.Classes[i].Ports[j].Protocol)
		}
	}
	for i := range a.Rules {
		a.Rules[i].Protocol = Protocol(a.Rules[i].Protocol)
	}
	for i := range a.Egress {
		a.Egress[i].Protocol = Protocol(a.Egress[i].Protocol)
	}
	setServiceDefaults(a)
	setPublishDefaults(a)
}

// Protocol is the protocol p means: tcp when empty. It is the one place
// that default lives; SetAppDefaults applies it to an app, and readers of
// values that may not have been through it (a firewall rule, a rule of an
// app made in code) ask here.
func Protocol(p string) string {
	if p == "" {
		return ProtoTCP
	}
	return p
}

// RuntimeName is the runtime g means: netns when empty. An app's spec must
// name its runtime (validation refuses it empty); a guest made in code
// may not, and runs in netns.
func (g Guest) RuntimeName() string {
	if g.Runtime == "" {
		return RuntimeNetns
	}
	return g.Runtime
}

// SetServerDefaults fills in state ready and wireguardPort 51820.
func SetServerDefaults(s *Server) {
	if s.State == "" {
		s.State = ServerReady
	}
	if s.WireGuardPort == 0 {
		s.WireGuardPort = DefaultWireGuardPort
	}
}

// ValidateApp checks one app, whatever its source (it does not modify it:
// an empty protocol counts as tcp). Problems name fields by path; they carry
// no file or line, which only DecodeApps knows.
func ValidateApp(a *App) ErrorList {
	var errs ErrorList
	validateApp(a, newWhere("", &errs))
	return errs
}

// ValidateApps checks apps against each other: no two with the same name,
// no two explicit networks overlapping. It does not repeat ValidateApp's
// checks of each app.
func ValidateApps(apps []App) ErrorList {
	var errs ErrorList
	w := newWhere("", &errs)
	wheres := make([]*where, len(apps))
	for i := range wheres {
		wheres[i] = w
	}
	validateAcross(apps, wheres)
	return errs
}

// ValidateServers checks servers from any source (fields are named
// "servers[i].field"); defaults count as filled in.
func ValidateServers(servers []Server) ErrorList {
	var errs ErrorList
	w := newWhere("", &errs)
	wheres := make([]*where, len(servers))
	paths := make([]string, len(servers))
	for i := range servers {
		wheres[i] = w
		paths[i] = indexPath("servers", i)
	}
	validateServers(servers, wheres, paths)
	return errs
}

var (
	nameRE       = regexp.MustCompile(`^[a-z]([a-z0-9-]*[a-z0-9])?$`)
	serverNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	envNameRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	labelNameRE  = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	dnsSubRE     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// ValidName reports whether s may name an app, a class or a port: 1 to 32
// lowercase letters, digits and '-', starting with a letter and not ending
// with '-'. Such names fit in DNS labels, task IDs and, upper-cased with
// '-' as '_', in environment variable names.
func ValidName(s string) bool { return len(s) <= MaxNameLen && nameRE.MatchString(s) }

func checkName(w *where, path, what, s string) {
	switch {
	case s == "":
		w.errorf(path, "%s is required", what)
	case !ValidName(s):
		w.errorf(path, "%s %q is not valid: use 1 to %d lowercase letters, digits and '-', starting with a letter and not ending with '-'", what, truncate(s), MaxNameLen)
	}
}

// validLabelKey accepts label keys as Kubernetes does: an optional DNS
// subdomain prefix and '/', then a name of up to 63 characters.
func validLabelKey(s string) bool {
	prefix, name, hasPrefix := strings.Cut(s, "/")
	if !hasPrefix {
		name = prefix
	} else if prefix == "" || len(prefix) > 253 || !dnsSubRE.MatchString(prefix) {
		return false
	}
	return len(name) <= 63 && labelNameRE.MatchString(name)
}

func validLabelValue(s string) bool {
	return s == "" || (len(s) <= 63 && labelNameRE.MatchString(s))
}

func checkLabels(w *where, path string, labels map[string]string) {
	for _, k := range sortedKeys(labels) {
		p := keyPath(path, k)
		if !validLabelKey(k) {
			w.errorf(p, "label key %q is not valid: use letters, digits, '-', '_' and '.' (at most 63, starting and ending with a letter or digit), optionally after a DNS prefix and '/'", truncate(k))
		}
		if !validLabelValue(labels[k]) {
			w.errorf(p, "label value %q is not valid: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit", truncate(labels[k]))
		}
	}
}

func checkHeader(w *where, apiVersion, kind, wantKind string) {
	switch apiVersion {
	case APIVersion:
	case "":
		w.errorf("apiVersion", "apiVersion is required: %s", APIVersion)
	default:
		w.errorf("apiVersion", "apiVersion must be %s, got %q", APIVersion, truncate(apiVersion))
	}
	switch kind {
	case wantKind:
	case "":
		w.errorf("kind", "kind is required: %s", wantKind)
	default:
		w.errorf("kind", "kind must be %s, got %q", wantKind, truncate(kind))
	}
}

func validateApp(a *App, w *where) {
	checkHeader(w, a.APIVersion, a.Kind, KindApp)
	checkName(w, "name", "app name", a.Name)
	switch {
	case len(a.Classes) == 0:
		w.errorf("classes", "at least one class is required")
	case len(a.Classes) > MaxClasses:
		w.errorf("classes", "an app has at most %d classes, got %d: split it into several apps", MaxClasses, len(a.Classes))
	}
	if len(a.Rules) > MaxRules {
		w.errorf("rules", "an app has at most %d rules, got %d: list several ports in one rule", MaxRules, len(a.Rules))
	}
	classes := map[string]int{}
	total := 0
	for i := range a.Classes {
		c := &a.Classes[i]
		p := indexPath("classes", i)
		validateClass(w, c, p)
		if c.Name != "" {
			if j, dup := classes[c.Name]; dup {
				w.errorf(p+".name", "class %q is already defined by %s", c.Name, w.ref(indexPath("classes", j)))
			} else {
				classes[c.Name] = i
			}
		}
		if c.Tasks > 0 && c.Tasks <= MaxTasks {
			total += c.Tasks
		}
	}
	if total > MaxAppTasks {
		w.errorf("classes", "an app runs at most %d tasks, got %d: split it into several apps", MaxAppTasks, total)
	}
	if len(a.Classes) > 0 {
		// With no classes every rule would be wrong; one error says it.
		validateServices(w, a, classes)
		validateRules(w, a.Rules, classes, importAliases(a))
		validateEgress(w, a, classes)
		validatePublish(w, a)
	}
	validateNetwork(w, a.Network, total)
}

func validateClass(w *where, c *Class, p string) {
	checkName(w, p+".name", "class name", c.Name)
	switch {
	case c.Tasks < 0:
		w.errorf(p+".tasks", "tasks must not be negative, got %d", c.Tasks)
	case c.Tasks > MaxTasks:
		w.errorf(p+".tasks", "tasks must be at most %d, got %d", MaxTasks, c.Tasks)
	}
	validateGuest(w, &c.Guest, p+".guest")

	r := c.Resources
	switch {
	case r.CPU == 0:
		w.errorf(p+".resources.cpu", "cpu is required: a CPU quantity such as \"250m\" or 1")
	case r.CPU < 0:
		w.errorf(p+".resources.cpu", "cpu must be positive, got %s", r.CPU)
	case r.CPU > MaxMilliCPU:
		w.errorf(p+".resources.cpu", "cpu must be at most %s CPUs, got %s", MaxMilliCPU, r.CPU)
	}
	switch {
	case r.Memory == 0:
		w.errorf(p+".resources.memory", "memory is required: a size such as \"128Mi\"")
	case r.Memory < MinMemory:
		w.errorf(p+".resources.memory", "memory must be at least %s, got %s", MinMemory, r.Memory)
	case r.Memory > MaxBytes:
		w.errorf(p+".resources.memory", "memory must be at most %s, got %s", MaxBytes, r.Memory)
	}
	if r.Pids != 0 && (r.Pids < MinPids || r.Pids > MaxPids) {
		w.errorf(p+".resources.pids", "pids must be between %d and %d (or left out for %d), got %d", MinPids, MaxPids, DefaultPids, r.Pids)
	}

	type portKey struct {
		port  int
		proto string
	}
	ports := map[portKey]string{}
	names := map[string]string{}
	for i, port := range c.Ports {
		pp := indexPath(p+".ports", i)
		if port.Name != "" {
			checkName(w, pp+".name", "port name", port.Name)
			if prev, dup := names[port.Name]; dup {
				w.errorf(pp+".name", "port name %q is already used by %s", port.Name, w.ref(prev))
			}
			names[port.Name] = pp
		}
		proto, ok := checkProtocol(w, pp+".protocol", port.Protocol)
		if port.Port < 1 || port.Port > 65535 {
			w.errorf(pp+".port", "port must be between 1 and 65535, got %d", port.Port)
			continue
		}
		if !ok {
			continue
		}
		k := portKey{port.Port, proto}
		if prev, dup := ports[k]; dup {
			w.errorf(pp+".port", "port %d/%s is listed twice (also %s)", port.Port, proto, w.ref(prev))
			continue
		}
		ports[k] = pp
	}

	if s := c.Placement.SpreadBy; s != "" && !validLabelKey(s) {
		w.errorf(p+".placement.spreadBy", "spreadBy %q is not a label key: name a server label such as zone or example.com/rack", truncate(s))
	}
	checkLabels(w, p+".placement.labels", c.Placement.Labels)
}

// checkProtocol accepts tcp, udp and empty (tcp), and gives the protocol
// meant.
func checkProtocol(w *where, path, proto string) (string, bool) {
	switch p := Protocol(proto); p {
	case ProtoTCP, ProtoUDP:
		return p, true
	}
	w.errorf(path, "protocol must be tcp or udp, got %q", truncate(proto))
	return "", false
}

func validateGuest(w *where, g *Guest, p string) {
	switch g.Runtime {
	case "":
		w.errorf(p+".runtime", "runtime is required: netns or vm")
	case RuntimeNetns:
		switch {
		case !g.Artifact.IsZero() && len(g.Command) > 0:
			w.errorf(p+".artifact", "give either command (a program on the host) or artifact (a program the agent fetches), not both: an artifact's arguments go in artifact.args")
		case !g.Artifact.IsZero():
			validateArtifact(w, g.Artifact, p+".artifact", RuntimeNetns)
		case len(g.Command) == 0:
			w.errorf(p+".command", "command is required for runtime netns: the program and its arguments, such as [corridor, sample, web] (or artifact: a program the agent fetches)")
		case g.Command[0] == "":
			w.errorf(p+".command[0]", "the program name is empty")
		}
		for _, f := range []struct{ field, val string }{{"kernel", g.Kernel}, {"initrd", g.Initrd}, {"image", g.Image}} {
			if f.val != "" {
				w.errorf(p+"."+f.field, "%s applies only to runtime vm", f.field)
			}
		}
		if g.VCPUs != 0 {
			w.errorf(p+".vcpus", "vcpus applies only to runtime vm")
		}
		if g.User != "" {
			if _, _, err := ParseUser(g.User); err != nil {
				w.errorf(p+".user", "%v", err)
			}
		}
	case RuntimeVM:
		// An artifact is the VM's boot image, delivered (see
		// validateVMArtifact): in place of kernel, initrd and image.
		if !g.Artifact.IsZero() {
			validateVMArtifact(w, g, p)
		}
		// Neither kernel nor image: the host's default guest image (see
		// docs/guests.md), whose init runs the command.
		switch {
		case !g.Artifact.IsZero():
		case g.Kernel == "" && g.Image == "" && len(g.Command) == 0:
			w.errorf(p+".command", "runtime vm with the default guest image needs a command: the program its init runs")
		case g.Kernel != "" && g.Image != "":
			w.errorf(p+".image", "give either kernel (and initrd) or image, not both")
		}
		if g.Initrd != "" && g.Kernel == "" {
			w.errorf(p+".initrd", "initrd needs a kernel")
		}
		if g.User != "" {
			w.errorf(p+".user", "user applies only to runtime netns (a VM's program runs as its image's init decides)")
		}
		if g.NetRaw {
			w.errorf(p+".netRaw", "netRaw applies only to runtime netns (a VM guest has its own kernel)")
		}
		if g.VCPUs < 0 || g.VCPUs > MaxVCPUs {
			w.errorf(p+".vcpus", "vcpus must be between 1 and %d (or left out), got %d", MaxVCPUs, g.VCPUs)
		}
	default:
		w.errorf(p+".runtime", "runtime must be netns or vm, got %q", truncate(g.Runtime))
	}
	for i, arg := range g.Command {
		if strings.ContainsRune(arg, 0) {
			w.errorf(indexPath(p+".command", i), "must not contain a NUL byte")
		}
	}
	for _, k := range sortedKeys(g.Env) {
		kp := keyPath(p+".env", k)
		switch {
		case len(k) > MaxEnvNameLen || !envNameRE.MatchString(k):
			w.errorf(kp, "environment variable name %q is not valid: use letters, digits and '_', not starting with a digit", truncate(k))
		case strings.HasPrefix(strings.ToUpper(k), EnvPrefix):
			w.errorf(kp, "environment variable %s is reserved: names starting with %s are set by Corridor (see the task environment in docs/spec.md)", k, EnvPrefix)
		}
		if strings.ContainsRune(g.Env[k], 0) {
			w.errorf(kp, "value must not contain a NUL byte")
		}
	}
}

func validateRules(w *where, rules []Rule, classes map[string]int, imports map[string]int) {
	type pairKey struct{ a, b string }
	type ruleKey struct {
		from, to, proto string
		port            int
	}
	known := make([]string, 0, len(classes))
	for c := range classes {
		known = append(known, c)
	}
	slices.Sort(known)
	checkClass := func(path, role, name string) bool {
		_, imported := imports[name]
		switch _, ok := classes[name]; {
		case role == "to" && imported && !ok:
			return true // an imported service: its ports are checked against the export (CheckImports)
		case role == "from" && imported && !ok:
			w.errorf(path, "%q is an imported service: it only accepts connections; a rule's from is a class of this app", truncate(name))
		case name == "":
			w.errorf(path, "%s is required: the class that %s", role, map[string]string{
				"from": "opens connections", "to": "accepts connections"}[role])
		case !ok:
			w.errorf(path, "class %q is not defined in this app (classes: %s)%s", truncate(name), strings.Join(known, ", "), importHint(role, imports))
		default:
			return true
		}
		return false
	}

	pairs := map[pairKey]int{}
	seen := map[ruleKey]string{}
	for i, r := range rules {
		p := indexPath("rules", i)
		fromOK := checkClass(p+".from", "from", r.From)
		toOK := checkClass(p+".to", "to", r.To)
		proto, protoOK := checkProtocol(w, p+".protocol", r.Protocol)
		for _, pt := range checkPorts(w, p+".ports", r.Ports, "in this rule ") {
			port, pp := pt.port, pt.path
			if !fromOK || !toOK || !protoOK {
				continue
			}
			k := ruleKey{r.From, r.To, proto, port}
			if prev, dup := seen[k]; dup {
				w.errorf(pp, "duplicate rule: %s -> %s %s/%d is already allowed by %s", r.From, r.To, proto, port, w.ref(prev))
				continue
			}
			seen[k] = pp
		}
		if !fromOK || !toOK {
			continue
		}
		// The encryption decision belongs to the unordered pair: replies
		// and connections the other way share the same hosts' paths.
		k := pairKey{min(r.From, r.To), max(r.From, r.To)}
		j, ok := pairs[k]
		if !ok {
			pairs[k] = i
			continue
		}
		if rules[j].Encrypt != r.Encrypt {
			first := indexPath("rules", j)
			w.errorf(p+".encrypt", "encrypt: %t conflicts with encrypt: %t of %s, a rule between the same classes %s and %s: traffic between a class pair is either all encrypted or all plain",
				r.Encrypt, rules[j].Encrypt, w.ref(first), k.a, k.b)
		}
	}
}

func validateNetwork(w *where, network string, tasks int) {
	if network == "" {
		return
	}
	p, err := netip.ParsePrefix(network)
	if err != nil {
		w.errorf("network", "network %q is not an IPv4 prefix such as 100.64.1.0/24", truncate(network))
		return
	}
	if !p.Addr().Is4() {
		w.errorf("network", "network must be an IPv4 prefix, got %s", p)
		return
	}
	if m := p.Masked(); m != p {
		w.errorf("network", "network %s has host bits set: did you mean %s?", p, m)
		p = m
	}
	if usable := usableAddrs(p.Bits()); tasks > usable {
		w.errorf("network", "network %s has %d usable addresses but the app runs %d tasks: use a /%d or larger", p, usable, tasks, prefixFor(tasks))
	}
}

// usableAddrs is the size of an IPv4 prefix less its network and broadcast
// addresses.
func usableAddrs(bits int) int {
	return max(0, 1<<(32-bits)-2)
}

// prefixFor is the longest IPv4 prefix with room for n addresses.
func prefixFor(n int) int {
	for bits := 30; bits > 0; bits-- {
		if usableAddrs(bits) >= n {
			return bits
		}
	}
	return 0
}

// validateAcross checks apps against each other; wheres[i] is where app i
// came from.
func validateAcross(apps []App, wheres []*where) {
	// place says where app i is, for a message about another app.
	place := func(idx int, path string) string {
		w := wheres[idx]
		if pos := w.at(path); pos.Line > 0 {
			return fmt.Sprintf("%s:%d", w.file, pos.Line)
		}
		return indexPath("apps", idx)
	}
	names := map[string]int{}
	for i, a := range apps {
		if a.Name == "" {
			continue
		}
		if j, dup := names[a.Name]; dup {
			wheres[i].errorf("name", "app %q is defined twice (also at %s)", a.Name, place(j, "name"))
			continue
		}
		names[a.Name] = i
	}
	type net struct {
		idx int
		p   netip.Prefix
	}
	var nets []net
	for i, a := range apps {
		p, err := netip.ParsePrefix(a.Network)
		if err != nil || !p.Addr().Is4() {
			continue // reported by validateNetwork
		}
		p = p.Masked()
		for _, n := range nets {
			if n.p.Overlaps(p) {
				wheres[i].errorf("network", "network %s of app %q overlaps network %s of app %q (%s)",
					p, apps[i].Name, n.p, apps[n.idx].Name, place(n.idx, "network"))
				break
			}
		}
		nets = append(nets, net{i, p})
	}
	validateEgressAcross(apps, wheres)
	validatePublishAcross(apps, wheres)
}

func validateServers(servers []Server, wheres []*where, paths []string) {
	names := map[string]int{}
	addrs := map[netip.Addr]int{}
	for i := range servers {
		s, w, p := &servers[i], wheres[i], paths[i]
		switch {
		case s.Name == "":
			w.errorf(p+".name", "server name is required")
		case len(s.Name) > MaxServerNameLen || !serverNameRE.MatchString(s.Name):
			w.errorf(p+".name", "server name %q is not valid: use 1 to %d lowercase letters, digits and '-', starting and ending with a letter or digit", truncate(s.Name), MaxServerNameLen)
		default:
			if j, dup := names[s.Name]; dup {
				w.errorf(p+".name", "server %q is listed twice (also %s)", s.Name, wheres[j].ref(paths[j]))
			} else {
				names[s.Name] = i
			}
		}

		if s.Address == "" {
			w.errorf(p+".address", "address is required: the server's underlay IP address")
		} else if a, err := netip.ParseAddr(s.Address); err != nil || a.Zone() != "" {
			w.errorf(p+".address", "address %q is not an IP address", truncate(s.Address))
		} else if a = a.Unmap(); a.IsUnspecified() || a.IsMulticast() {
			w.errorf(p+".address", "address %s cannot be a server's underlay address", a)
		} else if j, dup := addrs[a]; dup {
			w.errorf(p+".address", "address %s is already the address of server %q (%s)", a, servers[j].Name, wheres[j].ref(paths[j]))
		} else {
			addrs[a] = i
		}

		switch {
		case s.Capacity.CPU == 0:
			w.errorf(p+".capacity.cpu", "capacity cpu is required: the CPUs tasks may reserve, such as 4")
		case s.Capacity.CPU < 0 || s.Capacity.CPU > MaxMilliCPU:
			w.errorf(p+".capacity.cpu", "capacity cpu must be between 1m and %s CPUs, got %s", MaxMilliCPU, s.Capacity.CPU)
		}
		switch {
		case s.Capacity.Memory == 0:
			w.errorf(p+".capacity.memory", "capacity memory is required: the memory tasks may reserve, such as 8Gi")
		case s.Capacity.Memory < 0 || s.Capacity.Memory > MaxBytes:
			w.errorf(p+".capacity.memory", "capacity memory must be between 1 byte and %s, got %s", MaxBytes, s.Capacity.Memory)
		}

		if s.Capacity.Pids != 0 {
			w.errorf(p+".capacity.pids", "pids is a task limit (a class's resources.pids), not a server capacity")
		}

		switch s.State {
		case "", ServerReady, ServerDraining, ServerDown:
		default:
			w.errorf(p+".state", "state must be ready, draining or down, got %q", truncate(s.State))
		}
		if s.WireGuardPort < 0 || s.WireGuardPort > 65535 {
			w.errorf(p+".wireguardPort", "wireguardPort must be between 1 and 65535, got %d", s.WireGuardPort)
		}
		if s.KeyGeneration < 0 {
			w.errorf(p+".keyGeneration", "keyGeneration must not be negative, got %d", s.KeyGeneration)
		}
		if s.PublicKey != "" {
			if k, err := base64.StdEncoding.DecodeString(s.PublicKey); err != nil || len(k) != 32 {
				w.errorf(p+".publicKey", "publicKey is not a WireGuard public key: it must be 32 bytes in base64 (44 characters), as `wg pubkey` prints")
			}
		}
		checkLabels(w, p+".labels", s.Labels)
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ParseUser reads guest.user: "UID" or "UID:GID", numeric, GID defaulting
// to UID. Neither may be 0 (root) or 4294967295 (the kernel's -1); names
// are refused, since a name means a different ID on each host.
func ParseUser(s string) (uid, gid uint32, err error) {
	us, gs, hasGID := strings.Cut(s, ":")
	parse := func(what, v string) (uint32, error) {
		n, err := strconv.ParseUint(v, 10, 32)
		switch {
		case err != nil:
			return 0, fmt.Errorf("user %q: the %s must be a number (names are refused: they mean different IDs on different hosts)", truncate(s), what)
		case n == 0:
			return 0, fmt.Errorf("user %q: the %s must not be 0: a netns guest never runs as root", truncate(s), what)
		case n == 1<<32-1:
			return 0, fmt.Errorf("user %q: the %s 4294967295 is the kernel's \"no ID\"", truncate(s), what)
		}
		return uint32(n), nil
	}
	if uid, err = parse("UID", us); err != nil {
		return 0, 0, err
	}
	gid = uid
	if hasGID {
		if gid, err = parse("GID", gs); err != nil {
			return 0, 0, err
		}
	}
	return uid, gid, nil
}

// portAt is a port of a list and its path in the document.
type portAt struct {
	port int
	path string
}

// checkPorts checks a list of ports at path (rules' and egress
// destinations' alike): at least one, each from 1 to 65535, none twice
// (scope says where, in the message). It returns the valid ones, in order.
func checkPorts(w *where, path string, ports []int, scope string) []portAt {
	if len(ports) == 0 {
		w.errorf(path, "at least one port is required")
	}
	var out []portAt
	seen := map[int]string{}
	for j, port := range ports {
		pp := indexPath(path, j)
		if port < 1 || port > 65535 {
			w.errorf(pp, "port must be between 1 and 65535, got %d", port)
			continue
		}
		if prev, dup := seen[port]; dup {
			w.errorf(pp, "port %d is listed twice %s(also %s)", port, scope, w.ref(prev))
			continue
		}
		seen[port] = pp
		out = append(out, portAt{port, pp})
	}
	return out
}
