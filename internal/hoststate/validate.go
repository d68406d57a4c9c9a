package hoststate

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/corridor-dev/corridor/internal/spec"
)

var (
	// ErrInvalid is wrapped by every error Validate and CheckNetwork
	// return, but for ErrNewerSchema.
	ErrInvalid = errors.New("hoststate: invalid host state")
	// ErrNewerSchema is wrapped by Validate's error for a state of a newer
	// major schema than this build reads.
	ErrNewerSchema = errors.New("hoststate: newer schema")
)

// FieldError is a problem with one field of a state. It wraps ErrInvalid.
type FieldError struct {
	Field string // such as "guests[2].address"
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Unwrap makes every FieldError an ErrInvalid.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Bounds on a state. A state past them comes from a buggy or hostile
// server; the host keeps its last good state instead.
const (
	MaxGuests = 1000
	MaxPeers  = 100000
	MaxRoutes = 1000000
)

// overlayGuard holds addresses no guest may take: they belong to the host's
// own plumbing or are not unicast.
var overlayGuard = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/3"),
}

// ParseSchema reads a schema version, "major.minor"; empty is 1.0, the
// format written before states carried a schema.
func ParseSchema(s string) (major, minor int, err error) {
	if s == "" {
		return 1, 0, nil
	}
	ma, mi, ok := strings.Cut(s, ".")
	major, err1 := strconv.Atoi(ma)
	minor, err2 := strconv.Atoi(mi)
	if !ok || err1 != nil || err2 != nil || major < 0 || minor < 0 {
		return 0, 0, fmt.Errorf("%q is not a schema version major.minor, such as %s", s, Schema)
	}
	return major, minor, nil
}

// CheckSchema accepts a schema of this build's major version, any minor,
// and refuses a newer major version (ErrNewerSchema) or a malformed one.
func CheckSchema(s string) error {
	major, _, err := ParseSchema(s)
	switch {
	case err != nil:
		return &FieldError{Field: "schema", Msg: err.Error()}
	case major > SchemaMajor:
		return fmt.Errorf("%w: state of schema %s, but this build reads schema %d.x only: upgrade corridor on this host",
			ErrNewerSchema, s, SchemaMajor)
	case major < SchemaMajor:
		return invalid("schema", "%s is older than any schema this build reads (%d.x)", s, SchemaMajor)
	}
	return nil
}

// Options are what Validate checks a state against: the host that will
// apply it.
type Options struct {
	// Host is the name of the host; a state for another host is refused.
	// Empty skips the check.
	Host string
	// Runtimes are the guest runtimes the host runs (nil: netns and vm);
	// a state with a guest of another runtime is refused whole.
	Runtimes []string
	// ServerAddrs are the server's underlay addresses: a state that would
	// send any of them into a tunnel is refused, since the control channel
	// must stay on the underlay or a broken tunnel could never be repaired.
	ServerAddrs []netip.Addr
	// Dataplane, when set, checks what only the host's data plane knows
	// (dataplane.Validate: its interface names), without touching the
	// kernel.
	Dataplane func(State) error
}

// Validate checks a state before it is kept or applied: the whole state is
// refused on any error, so that the host stays on its last good state.
// Errors name the field and wrap ErrInvalid; a state of a newer major
// schema is refused with ErrNewerSchema before anything else is read.
func Validate(st State, opt Options) error {
	if err := CheckSchema(st.Schema); err != nil {
		return err
	}
	if opt.Host != "" && st.Host != "" && st.Host != opt.Host {
		return invalid("host", "state is for host %q, not %q", st.Host, opt.Host)
	}
	if st.KeyGeneration < 0 {
		return invalid("keyGeneration", "%d is negative", st.KeyGeneration)
	}
	if nr := st.NumRoutes(); len(st.Guests) > MaxGuests || len(st.Peers) > MaxPeers || nr > MaxRoutes {
		return fmt.Errorf("%w: state too large: %d guests (max %d), %d peers (max %d), %d routes (max %d)",
			ErrInvalid, len(st.Guests), MaxGuests, len(st.Peers), MaxPeers, nr, MaxRoutes)
	}
	if err := checkGroups(st); err != nil {
		return err
	}
	// A derived state (schema 1.6) is checked with its lists as its
	// groups give them, and refused when they cannot be derived.
	st, err := st.CheckedFilled()
	if err != nil {
		return err
	}
	runtimes := opt.Runtimes
	if runtimes == nil {
		runtimes = []string{spec.RuntimeNetns, spec.RuntimeVM}
	}
	seenTask := map[string]bool{}
	for i, g := range st.Guests {
		if err := checkGuest(fmt.Sprintf("guests[%d]", i), g, st, runtimes, seenTask); err != nil {
			return err
		}
	}
	if err := checkRotationSchema(st); err != nil {
		return err
	}
	if err := checkMove(st, runtimes, seenTask); err != nil {
		return err
	}
	if err := CheckNetwork(st); err != nil {
		return err
	}
	if err := checkAppNetworks(st); err != nil {
		return err
	}
	if err := checkServerAddrs(st, opt.ServerAddrs); err != nil {
		return err
	}
	if err := checkOutboundServers(st, opt.ServerAddrs); err != nil {
		return err
	}
	if err := checkIngressServers(st, opt.ServerAddrs); err != nil {
		return err
	}
	if opt.Dataplane != nil {
		return opt.Dataplane(st)
	}
	return nil
}

// checkRotationSchema refuses the fields of a hitless key rotation in a
// state of a schema older than 1.3, which had none: a state that claims
// an older schema carries only what that schema knew.
func checkRotationSchema(st State) error {
	if _, minor, _ := ParseSchema(st.Schema); minor >= 3 { // checked by CheckSchema
		return nil
	}
	why := "only a state of schema 1.3 or later carries a key rotation, this one is of schema " + cmp.Or(st.Schema, "1.0")
	if st.RotationPhase != "" {
		return invalid("rotationPhase", "%s", why)
	}
	if st.PublicKey != "" {
		return invalid("publicKey", "%s", why)
	}
	for i, p := range st.Peers {
		if p.NextPublicKey != "" {
			return invalid(fmt.Sprintf("peers[%d].nextPublicKey", i), "%s", why)
		}
	}
	return nil
}

// checkGuest checks what every guest of a state must be, staged or not:
// a task given once (tasks records it), of a runtime this host runs, at an
// IPv4 address that is neither the host's nor reserved, requesting no
// negative resources.
func checkGuest(field string, g Guest, st State, runtimes []string, tasks map[string]bool) error {
	switch {
	case g.Task == "" || tasks[g.Task]:
		return invalid(field+".task", "%q is empty or given twice", g.Task)
	case !slices.Contains(runtimes, g.Spec.RuntimeName()):
		return invalid(field+".spec.runtime", "%q is not a runtime this host runs (%v)", g.Spec.Runtime, runtimes)
	case !g.Address.Is4():
		return invalid(field+".address", "%q is not an IPv4 address", g.Address)
	case g.Address == st.Address:
		return invalid(field+".address", "%s is the host's own underlay address", g.Address)
	case g.Resources.CPU < 0 || g.Resources.Memory < 0:
		return invalid(field+".resources", "negative request")
	}
	for _, p := range overlayGuard {
		if p.Contains(g.Address) {
			return invalid(field+".address", "%s is in %s, which no guest may use", g.Address, p)
		}
	}
	tasks[g.Task] = true
	return nil
}

// checkMove checks the fields of a task move (Staged, Hold): only a state
// of schema 1.4 or later carries them; a staged copy is a guest like
// another (checkGuest, a task address of its app's network, an interface
// of its own) of a task this host does not also run; a held address is an
// IPv4 overlay address.
func checkMove(st State, runtimes []string, tasks map[string]bool) error {
	if len(st.Staged) == 0 && len(st.Hold) == 0 {
		return nil
	}
	if _, minor, _ := ParseSchema(st.Schema); minor < 4 {
		field := "staged"
		if len(st.Staged) == 0 {
			field = "hold"
		}
		return invalid(field, "only a state of schema 1.4 or later carries a task move, this one is of schema %s", cmp.Or(st.Schema, "1.0"))
	}
	ifs := map[string]bool{}
	for _, g := range st.Guests {
		ifs[g.HostIf] = true
	}
	for i, g := range st.Staged {
		f := fmt.Sprintf("staged[%d]", i)
		if err := checkGuest(f, g, st, runtimes, tasks); err != nil {
			return err
		}
		switch {
		case g.HostIf == "" || len(g.HostIf) > 15 || ifs[g.HostIf]:
			return invalid(f+".hostIf", "%q is empty, longer than 15 characters or used by another guest", g.HostIf)
		case !g.Network.IsValid() || !g.Network.Contains(g.Address) || g.Address == g.Network.Addr() || g.Address == lastAddr(g.Network):
			return invalid(f+".address", "%s is not a task address of app %s's network %s", g.Address, g.App, g.Network)
		}
		ifs[g.HostIf] = true
	}
	for i, a := range st.Hold {
		if err := overlayAddr(fmt.Sprintf("hold[%d]", i), a); err != nil {
			return err
		}
	}
	return nil
}

// checkAppNetworks refuses a task address outside its app's network,
// whatever signed the state: every guest's address is a task address of
// its Network (neither the network's own address nor its broadcast), the
// guests of one app agree on it, two apps' networks do not overlap, and
// every address of a firewall rule is in the network of its app (sources
// and remote sources in App's, dests in ToApp's for a rule across apps),
// wherever that app has a guest here. A state of schema 1.0 carries
// no networks; from 1.1 on every guest must.
func checkAppNetworks(st State) error {
	_, minor, _ := ParseSchema(st.Schema) // checked by CheckSchema
	nets := map[string]netip.Prefix{}
	for i, g := range st.Guests {
		f := fmt.Sprintf("guests[%d]", i)
		if !g.Network.IsValid() {
			if minor >= 1 {
				return invalid(f+".network", "missing: a state of schema %s names every guest's app network", st.Schema)
			}
			continue
		}
		n := g.Network
		if !n.Addr().Is4() || n != n.Masked() || n.Bits() > 30 {
			return invalid(f+".network", "%s is not an IPv4 network of at least 4 addresses", n)
		}
		if prev, ok := nets[g.App]; ok && prev != n {
			return invalid(f+".network", "%s, but another guest of app %s has %s", n, g.App, prev)
		}
		nets[g.App] = n
		a := g.Address.Unmap()
		if !n.Contains(a) || a == n.Addr() || a == lastAddr(n) {
			return invalid(f+".address", "%s is not a task address of app %s's network %s: refused whatever the signature says", a, g.App, n)
		}
	}
	apps := make([]string, 0, len(nets))
	for app := range nets {
		apps = append(apps, app)
	}
	slices.Sort(apps)
	for i, x := range apps {
		for _, y := range apps[i+1:] {
			if nets[x].Overlaps(nets[y]) {
				return invalid("guests", "networks %s of app %s and %s of app %s overlap", nets[x], x, nets[y], y)
			}
		}
	}
	for i, r := range st.Firewall {
		// Sources are App's tasks; Dests those of ToApp (App when empty).
		// A network is known when the app has a guest here: the local
		// side of every rule is always checked.
		toApp := r.App
		if r.ToApp != "" {
			toApp = r.ToApp
		}
		for _, list := range []struct {
			name  string
			app   string
			addrs []netip.Addr
		}{{"sources", r.App, r.Sources}, {"dests", toApp, r.Dests}, {"remoteSources", r.App, r.RemoteSources}} {
			n, ok := nets[list.app]
			if !ok {
				continue
			}
			for j, a := range list.addrs {
				if !n.Contains(a.Unmap()) {
					return invalid(fmt.Sprintf("firewall[%d].%s[%d]", i, list.name, j), "%s is outside app %s's network %s", a.Unmap(), list.app, n)
				}
			}
		}
	}
	return nil
}

// lastAddr is the highest address of p (IPv4).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom4(b)
}

// checkServerAddrs refuses a state that would send a server address into
// a tunnel.
func checkServerAddrs(st State, servers []netip.Addr) error {
	for _, s := range servers {
		bad := func(field, where string) error {
			return invalid(field, "routes the server address %s into a tunnel (%s): refused, the control channel must stay on the underlay", s, where)
		}
		for i, p := range st.Peers {
			for _, pfx := range p.AllowedIPs {
				if pfx.Contains(s) {
					return bad(fmt.Sprintf("peers[%d].allowedIPs", i), "WireGuard peer "+p.Server+" allowed IP "+pfx.String())
				}
			}
		}
		for i, v := range st.VXLAN {
			if slices.Contains(v.Guests, s) {
				return bad(fmt.Sprintf("vxlan[%d].guests", i), "VXLAN entry for "+v.Server)
			}
		}
		var err error
		st.eachRouteAt(func(r Route, k, j int) bool {
			if r.Dest == s {
				err = bad(routeField(k, j)+".dest", "route to "+r.Server)
			}
			return err == nil
		})
		if err != nil {
			return err
		}
		for i, g := range st.Guests {
			if g.Address == s {
				return bad(fmt.Sprintf("guests[%d].address", i), "guest "+g.Task)
			}
		}
	}
	return nil
}

// overlayAddr checks that a is a valid IPv4 overlay address: the data plane
// routes guests by IPv4 /32 only.
func overlayAddr(field string, a netip.Addr) error {
	if !a.IsValid() {
		return invalid(field, "missing address")
	}
	if !a.Unmap().Is4() {
		return invalid(field, "%s is not IPv4: guests have IPv4 overlay addresses only", a)
	}
	return nil
}

// ParseMAC reads a unicast Ethernet MAC address (corv0's, local or remote).
func ParseMAC(s string) (net.HardwareAddr, error) {
	m, err := net.ParseMAC(s)
	if err != nil || len(m) != 6 {
		return nil, fmt.Errorf("%q is not an Ethernet MAC address", s)
	}
	if m[0]&1 == 1 {
		return nil, fmt.Errorf("%s is a multicast address", s)
	}
	return m, nil
}

// UnmapPrefix turns an IPv4-mapped IPv6 prefix into its IPv4 form, masked.
func UnmapPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.Addr().Is4In6() {
		return p.Masked(), nil
	}
	if p.Bits() < 96 {
		return netip.Prefix{}, fmt.Errorf("%s is not an IPv4 prefix", p)
	}
	return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked(), nil
}

// CheckNetwork is the part of Validate that a data plane relies on to
// build the state: the underlay, corw0's port, the MACs, peers' keys and
// endpoints, addresses (IPv4, IPv4-mapped allowed), routes and firewall
// rules, each unique where it must be. The data plane calls it on every
// state it applies; Validate calls it too.
func CheckNetwork(st State) error {
	// The lists of a derived state, as its groups give them.
	st, err := st.CheckedFilled()
	if err != nil {
		return err
	}
	switch st.RotationPhase {
	case "", RotationAnnounce, RotationCommit:
	default:
		return invalid("rotationPhase", "%q is not a phase (%q or %q)", st.RotationPhase, RotationAnnounce, RotationCommit)
	}
	if st.PublicKey != "" {
		if _, err := wgtypes.ParseKey(st.PublicKey); err != nil {
			return invalid("publicKey", "%v", err)
		}
	}
	if st.RotationPhase == RotationCommit && st.PublicKey == "" {
		return invalid("publicKey", "missing in rotation phase %q", RotationCommit)
	}
	if st.RotationPhase != "" && st.WireGuardPort >= 65535 {
		return invalid("wireguardPort", "%d leaves no port for the second WireGuard device of a key rotation", st.WireGuardPort)
	}
	underlay := st.Address.Unmap()
	if !underlay.IsValid() {
		return invalid("address", "missing underlay address")
	}
	if st.WireGuardPort < 0 || st.WireGuardPort > 65535 {
		return invalid("wireguardPort", "%d is not a UDP port", st.WireGuardPort)
	}
	if _, err := ParseMAC(st.VTEPMAC); err != nil {
		return invalid("vtepMAC", "%v", err)
	}

	local := map[netip.Addr]bool{}
	ifs := map[string]bool{}
	for i, g := range st.Guests {
		f := fmt.Sprintf("guests[%d]", i)
		if err := overlayAddr(f+".address", g.Address); err != nil {
			return err
		}
		if g.HostIf == "" || len(g.HostIf) > 15 {
			return invalid(f+".hostIf", "%q must have 1 to 15 characters", g.HostIf)
		}
		if ifs[g.HostIf] {
			return invalid(f+".hostIf", "%q is used by two guests", g.HostIf)
		}
		a := g.Address.Unmap()
		if local[a] {
			return invalid(f+".address", "%s is used by two guests", a)
		}
		ifs[g.HostIf], local[a] = true, true
		if err := checkName(f+".app", g.App); err != nil {
			return err
		}
		if err := checkName(f+".class", g.Class); err != nil {
			return err
		}
	}

	enc := map[netip.Prefix]bool{}
	seenKeys := map[wgtypes.Key]bool{}
	for i, p := range st.Peers {
		f := fmt.Sprintf("peers[%d]", i)
		key, err := wgtypes.ParseKey(p.PublicKey)
		if err != nil {
			return invalid(f+".publicKey", "%v", err)
		}
		if seenKeys[key] {
			return invalid(f+".publicKey", "key of server %q appears twice", p.Server)
		}
		seenKeys[key] = true
		if !p.Endpoint.IsValid() || p.Endpoint.Port() == 0 {
			return invalid(f+".endpoint", "%q is not an address:port", p.Endpoint)
		}
		if p.NextPublicKey != "" {
			next, err := wgtypes.ParseKey(p.NextPublicKey)
			if err != nil {
				return invalid(f+".nextPublicKey", "%v", err)
			}
			if next != key && seenKeys[next] {
				return invalid(f+".nextPublicKey", "key of server %q appears twice", p.Server)
			}
			seenKeys[next] = true
			if p.Endpoint.Port() == 65535 {
				return invalid(f+".endpoint", "port 65535 leaves no port for the peer's second WireGuard device")
			}
		}
		for j, pre := range p.AllowedIPs {
			ff := fmt.Sprintf("%s.allowedIPs[%d]", f, j)
			if !pre.IsValid() {
				return invalid(ff, "missing prefix")
			}
			if err := overlayAddr(ff, pre.Addr()); err != nil {
				return err
			}
			m, err := UnmapPrefix(pre)
			if err != nil {
				return invalid(ff, "%v", err)
			}
			if enc[m] {
				return invalid(ff, "%s is allowed for two peers", m)
			}
			enc[m] = true
		}
	}

	fdb := map[string]netip.Addr{}
	plain := map[netip.Addr]bool{}
	for i, v := range st.VXLAN {
		f := fmt.Sprintf("vxlan[%d]", i)
		m, err := ParseMAC(v.MAC)
		if err != nil {
			return invalid(f+".mac", "%q is not a unicast Ethernet MAC address", v.MAC)
		}
		u := v.Underlay.Unmap()
		if !u.IsValid() {
			return invalid(f+".underlay", "missing underlay address")
		}
		if u.Is4() != underlay.Is4() {
			return invalid(f+".underlay", "%s is not of the same family as this host's underlay %s", u, underlay)
		}
		if prev, ok := fdb[m.String()]; ok && prev != u {
			return invalid(f+".mac", "%s is already the MAC of the host at %s", m, prev)
		}
		fdb[m.String()] = u
		for j, g := range v.Guests {
			ff := fmt.Sprintf("%s.guests[%d]", f, j)
			if err := overlayAddr(ff, g); err != nil {
				return err
			}
			if plain[g.Unmap()] {
				return invalid(ff, "%s is listed twice", g.Unmap())
			}
			plain[g.Unmap()] = true
		}
	}

	pairs := map[[2]netip.Addr]bool{} // -> encrypt
	var rerr error
	st.eachRouteAt(func(r Route, gk, gj int) bool {
		f := routeField(gk, gj)
		if err := overlayAddr(f+".dest", r.Dest); err != nil {
			rerr = err
			return false
		}
		for j, s := range r.Sources {
			ff := fmt.Sprintf("%s.sources[%d]", f, j)
			if err := overlayAddr(ff, s); err != nil {
				rerr = err
				return false
			}
			k := [2]netip.Addr{s.Unmap(), r.Dest.Unmap()}
			if prev, ok := pairs[k]; ok && prev != r.Encrypt {
				rerr = invalid(ff, "pair %s -> %s is both encrypted and plain", k[0], k[1])
				return false
			}
			pairs[k] = r.Encrypt
		}
		return true
	})
	if rerr != nil {
		return rerr
	}

	for i, r := range st.Firewall {
		f := fmt.Sprintf("firewall[%d]", i)
		if r.Direction != Egress && r.Direction != Ingress {
			return invalid(f+".direction", "%q is neither %q nor %q", r.Direction, Egress, Ingress)
		}
		switch r.Protocol {
		case "", spec.ProtoTCP, spec.ProtoUDP:
		default:
			return invalid(f+".protocol", "%q is neither %q nor %q", r.Protocol, spec.ProtoTCP, spec.ProtoUDP)
		}
		for j, p := range r.Ports {
			if p < 1 || p > 65535 {
				return invalid(fmt.Sprintf("%s.ports[%d]", f, j), "%d is not a port", p)
			}
		}
		for _, list := range []struct {
			name  string
			addrs []netip.Addr
		}{{"sources", r.Sources}, {"dests", r.Dests}, {"remoteSources", r.RemoteSources}} {
			for j, a := range list.addrs {
				if err := overlayAddr(fmt.Sprintf("%s.%s[%d]", f, list.name, j), a); err != nil {
					return err
				}
			}
		}
		if err := checkName(f+".app", r.App); err != nil {
			return err
		}
		if err := checkName(f+".fromClass", r.FromClass); err != nil {
			return err
		}
		if err := checkName(f+".toClass", r.ToClass); err != nil {
			return err
		}
		if r.ToApp != "" {
			if err := checkName(f+".toApp", r.ToApp); err != nil {
				return err
			}
		}
	}
	if err := checkOutbound(st); err != nil {
		return err
	}
	return checkIngress(st)
}

// checkName rejects names that cannot be part of a counter name: the data
// plane's counters are named "kind:app:class" and parsed back.
func checkName(field, s string) error {
	if s == "" {
		return invalid(field, "missing name")
	}
	if strings.ContainsAny(s, ":\x00") || len(s) > 63 {
		return invalid(field, "%q must have at most 63 characters and no ':'", s)
	}
	return nil
}

// routeField names a route of a state: Routes[j] (k < 0), or the
// destination j of route group k.
func routeField(k, j int) string {
	if k < 0 {
		return fmt.Sprintf("routes[%d]", j)
	}
	return fmt.Sprintf("routeGroups[%d].dests[%d]", k, j)
}

// checkGroups checks what the expansion of st's route groups relies on:
// each group names its app and class, an app's groups are consecutive,
// and a group's destinations are overlay addresses in increasing order,
// each with its server.
func checkGroups(st State) error {
	seen := map[string]bool{}
	for k := range st.RouteGroups {
		g := &st.RouteGroups[k]
		f := fmt.Sprintf("routeGroups[%d]", k)
		if g.App == "" {
			return invalid(f+".app", "missing app")
		}
		if g.Class == "" {
			return invalid(f+".class", "missing class")
		}
		if k == 0 || st.RouteGroups[k-1].App != g.App {
			if seen[g.App] {
				return invalid(f+".app", "groups of app %q are not consecutive", g.App)
			}
			seen[g.App] = true
		}
		for j, s := range g.Sources {
			if err := overlayAddr(fmt.Sprintf("%s.sources[%d]", f, j), s); err != nil {
				return err
			}
		}
		for j := range g.Dests {
			d := &g.Dests[j]
			ff := fmt.Sprintf("%s.dests[%d]", f, j)
			if err := overlayAddr(ff+".addr", d.Addr); err != nil {
				return err
			}
			if d.Server == "" {
				return invalid(ff+".server", "missing server")
			}
			if j > 0 && !g.Dests[j-1].Addr.Less(d.Addr) {
				return invalid(ff+".addr", "%s is not after %s: destinations go by address, once each", d.Addr, g.Dests[j-1].Addr)
			}
		}
	}
	return nil
}
