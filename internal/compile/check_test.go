package compile

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// checkPlan verifies a plan against its input without reusing the
// compiler's code: the paths are recomputed from the rules, and what every
// host needs is recomputed from the paths alone.
func checkPlan(in Input, p *Plan) error {
	servers := map[string]*spec.Server{}
	for i := range in.Servers {
		servers[in.Servers[i].Name] = &in.Servers[i]
	}
	state := func(s *spec.Server) string {
		if s.State == "" {
			return spec.ServerReady
		}
		return s.State
	}

	// Networks: one per app, sorted, none overlapping, the spec's if given.
	if len(p.Networks) != len(in.Apps) {
		return fmt.Errorf("%d networks for %d apps", len(p.Networks), len(in.Apps))
	}
	nets := map[string]netip.Prefix{}
	for i, n := range p.Networks {
		if i > 0 && p.Networks[i-1].App >= n.App {
			return fmt.Errorf("networks not sorted at %s", n.App)
		}
		for _, m := range p.Networks[:i] {
			if m.Network.Overlaps(n.Network) {
				return fmt.Errorf("networks of %s and %s overlap", m.App, n.App)
			}
		}
		nets[n.App] = n.Network
	}
	type classInfo struct {
		app *spec.App
		cl  *spec.Class
	}
	want := map[string]classInfo{}
	classOf := map[[2]string]*spec.Class{}
	for i := range in.Apps {
		a := &in.Apps[i]
		if a.Network != "" && nets[a.Name].String() != a.Network {
			return fmt.Errorf("app %s got network %s, spec says %s", a.Name, nets[a.Name], a.Network)
		}
		for j := range a.Classes {
			cl := &a.Classes[j]
			classOf[[2]string{a.Name, cl.Name}] = cl
			for k := 0; k < cl.Tasks; k++ {
				want[spec.TaskID(a.Name, cl.Name, k)] = classInfo{a, cl}
			}
		}
	}

	// Tasks: exactly the wanted ones, sorted, each on a server that may
	// hold it, with a unique address in its app's network.
	if p.Tasks.Len() != len(want) {
		return fmt.Errorf("%d tasks, want %d", p.Tasks.Len(), len(want))
	}
	tasks := map[string]*Task{}
	addrs := map[netip.Addr]string{}
	usedCPU := map[string]int64{}
	usedMem := map[string]int64{}
	classAddrs := map[[2]string][]netip.Addr{}
	classAddrsOn := map[[3]string][]netip.Addr{}
	flat := p.Tasks.Flat()
	for i := range flat {
		t := &flat[i]
		if i > 0 {
			q := &flat[i-1]
			if cmp.Or(strings.Compare(q.App, t.App), strings.Compare(q.Class, t.Class), cmp.Compare(q.Index, t.Index)) >= 0 {
				return fmt.Errorf("tasks not sorted at %s", t.ID)
			}
		}
		ci, ok := want[t.ID]
		if !ok || t.App != ci.app.Name || t.Class != ci.cl.Name || t.ID != spec.TaskID(t.App, t.Class, t.Index) {
			return fmt.Errorf("unexpected task %+v", t)
		}
		tasks[t.ID] = t
		s := servers[t.Server]
		switch {
		case s == nil:
			return fmt.Errorf("task %s on unknown server %s", t.ID, t.Server)
		case state(s) == spec.ServerDown:
			return fmt.Errorf("task %s on down server %s", t.ID, t.Server)
		case state(s) == spec.ServerDraining && !t.Reason.Kept:
			return fmt.Errorf("new task %s on draining server %s", t.ID, t.Server)
		}
		for k, v := range ci.cl.Placement.Labels {
			if s.Labels[k] != v {
				return fmt.Errorf("task %s on %s which lacks %s=%s", t.ID, t.Server, k, v)
			}
		}
		n := nets[t.App]
		if !n.Contains(t.Address) || t.Address == n.Addr() || t.Address == lastAddr(n) {
			return fmt.Errorf("task %s address %s not usable in %s", t.ID, t.Address, n)
		}
		if other, dup := addrs[t.Address]; dup {
			return fmt.Errorf("tasks %s and %s share address %s", other, t.ID, t.Address)
		}
		addrs[t.Address] = t.ID
		usedCPU[t.Server] += int64(ci.cl.Resources.CPU)
		usedMem[t.Server] += int64(ci.cl.Resources.Memory)
		ck := [2]string{t.App, t.Class}
		classAddrs[ck] = append(classAddrs[ck], t.Address)
		sk := [3]string{t.App, t.Class, t.Server}
		classAddrsOn[sk] = append(classAddrsOn[sk], t.Address)
		if t.Reason.Chosen == "" {
			return fmt.Errorf("task %s has no reason", t.ID)
		}
	}
	for name, s := range servers {
		if usedCPU[name] > int64(s.Capacity.CPU) || usedMem[name] > int64(s.Capacity.Memory) {
			return fmt.Errorf("server %s over capacity", name)
		}
	}

	// Paths: exactly one per (rule's protocol, pair of distinct tasks).
	type pathKey struct{ from, to, proto string }
	type pathWant struct {
		encrypt bool
		ports   map[int]bool
	}
	wantPaths := map[pathKey]*pathWant{}
	for i := range in.Apps {
		a := &in.Apps[i]
		for _, r := range a.Rules {
			proto := cmp.Or(r.Protocol, spec.ProtoTCP)
			from, to := classOf[[2]string{a.Name, r.From}], classOf[[2]string{a.Name, r.To}]
			if to == nil {
				continue // a rule to an imported service: below
			}
			for x := 0; x < from.Tasks; x++ {
				for y := 0; y < to.Tasks; y++ {
					fid, tid := spec.TaskID(a.Name, r.From, x), spec.TaskID(a.Name, r.To, y)
					if fid == tid {
						continue
					}
					k := pathKey{fid, tid, proto}
					w := wantPaths[k]
					if w == nil {
						w = &pathWant{encrypt: r.Encrypt, ports: map[int]bool{}}
						wantPaths[k] = w
					}
					for _, port := range r.Ports {
						w.ports[port] = true
					}
				}
			}
		}
	}
	// Across apps: rules to imported services, on the ports exported.
	byApp := map[string]*spec.App{}
	for i := range in.Apps {
		byApp[in.Apps[i].Name] = &in.Apps[i]
	}
	for i := range in.Apps {
		a := &in.Apps[i]
		for _, r := range a.Rules {
			im := a.ImportOf(r.To)
			if im == nil || classOf[[2]string{a.Name, r.To}] != nil {
				continue
			}
			oname, svc, _ := strings.Cut(im.Service, "/")
			other := byApp[oname]
			if other == nil || other.Export(svc) == nil {
				continue
			}
			e := other.Export(svc)
			proto := cmp.Or(r.Protocol, spec.ProtoTCP)
			if cmp.Or(e.Protocol, spec.ProtoTCP) != proto {
				continue
			}
			from, to := classOf[[2]string{a.Name, r.From}], classOf[[2]string{oname, e.Class}]
			for x := 0; x < from.Tasks; x++ {
				for y := 0; y < to.Tasks; y++ {
					k := pathKey{spec.TaskID(a.Name, r.From, x), spec.TaskID(oname, e.Class, y), proto}
					for _, port := range r.Ports {
						if !slices.Contains(e.Ports, port) {
							continue
						}
						w := wantPaths[k]
						if w == nil {
							w = &pathWant{encrypt: r.Encrypt, ports: map[int]bool{}}
							wantPaths[k] = w
						}
						w.ports[port] = true
					}
				}
			}
		}
	}
	paths := p.Paths.Flat()
	n := 0
	for i, g := range p.Paths.Apps() {
		if g.Len() == 0 || (i > 0 && p.Paths.Apps()[i-1].App >= g.App) {
			return fmt.Errorf("path group %d (app %q, %d paths) is empty or out of order", i, g.App, g.Len())
		}
		m := 0
		for pa := range g.All() {
			if pa.App != g.App {
				return fmt.Errorf("path %s -> %s of app %s in the group of app %s", pa.From, pa.To, pa.App, g.App)
			}
			m++
		}
		if m != g.Len() {
			return fmt.Errorf("path group of app %s: Len() = %d, but it yields %d paths", g.App, g.Len(), m)
		}
		n += m
	}
	if n != p.Paths.Len() {
		return fmt.Errorf("Paths.Len() = %d, but the groups hold %d", p.Paths.Len(), n)
	}
	if len(paths) != len(wantPaths) {
		return fmt.Errorf("%d paths, want %d", len(paths), len(wantPaths))
	}
	seen := map[pathKey]bool{}
	for i := range paths {
		pa := &paths[i]
		k := pathKey{pa.From, pa.To, pa.Protocol}
		w := wantPaths[k]
		if w == nil || seen[k] {
			return fmt.Errorf("unexpected or repeated path %s -> %s %s", pa.From, pa.To, pa.Protocol)
		}
		seen[k] = true
		f, t := tasks[pa.From], tasks[pa.To]
		if pa.Encrypt != w.encrypt || pa.FromServer != f.Server || pa.ToServer != t.Server ||
			pa.FromAddr != f.Address || pa.ToAddr != t.Address || pa.Local != (f.Server == t.Server) ||
			pa.App != f.App || pa.FromClass != f.Class || pa.ToClass != t.Class || (pa.ToApp == "") != (t.App == f.App) ||
			(pa.ToApp != "" && pa.ToApp != t.App) {
			return fmt.Errorf("path %s -> %s is wrong: %+v", pa.From, pa.To, pa)
		}
		if len(pa.Ports) != len(w.ports) || !slices.IsSorted(pa.Ports) {
			return fmt.Errorf("path %s -> %s ports %v", pa.From, pa.To, pa.Ports)
		}
		for _, port := range pa.Ports {
			if !w.ports[port] {
				return fmt.Errorf("path %s -> %s ports %v", pa.From, pa.To, pa.Ports)
			}
		}
		if i > 0 {
			q := &paths[i-1]
			qf, qt := tasks[q.From], tasks[q.To]
			c := cmp.Or(strings.Compare(q.App, pa.App), cmpTask(qf, f), cmpTask(qt, t), strings.Compare(q.Protocol, pa.Protocol))
			if c >= 0 {
				return fmt.Errorf("paths not sorted at %s -> %s", pa.From, pa.To)
			}
		}
	}

	// What each host needs, from the paths alone.
	type route struct {
		src, dst netip.Addr
		enc      bool
	}
	type fwKey struct{ app, from, toApp, to, proto, dir string }
	peers := map[string]map[string]map[netip.Addr]bool{}
	vx := map[string]map[string]map[netip.Addr]bool{}
	routes := map[string]map[route]bool{}
	fw := map[string]map[fwKey]*Path{}
	add := func(m map[string]map[string]map[netip.Addr]bool, host, remote string, a netip.Addr) {
		if m[host] == nil {
			m[host] = map[string]map[netip.Addr]bool{}
		}
		if m[host][remote] == nil {
			m[host][remote] = map[netip.Addr]bool{}
		}
		m[host][remote][a] = true
	}
	for i := range paths {
		pa := &paths[i]
		for _, e := range []struct {
			host string
			dir  string
		}{{pa.FromServer, Egress}, {pa.ToServer, Ingress}} {
			if fw[e.host] == nil {
				fw[e.host] = map[fwKey]*Path{}
			}
			fw[e.host][fwKey{pa.App, pa.FromClass, pa.ToApp, pa.ToClass, pa.Protocol, e.dir}] = pa
		}
		if pa.Local {
			continue
		}
		m := vx
		if pa.Encrypt {
			m = peers
		}
		add(m, pa.FromServer, pa.ToServer, pa.ToAddr)
		add(m, pa.ToServer, pa.FromServer, pa.FromAddr)
		for _, r := range []struct {
			host     string
			src, dst netip.Addr
		}{{pa.FromServer, pa.FromAddr, pa.ToAddr}, {pa.ToServer, pa.ToAddr, pa.FromAddr}} {
			if routes[r.host] == nil {
				routes[r.host] = map[route]bool{}
			}
			routes[r.host][route{r.src, r.dst, pa.Encrypt}] = true
		}
	}

	// Ingress: what each entry host publishes, and what its legs add to
	// the entry host's and the backend hosts' peers, VXLAN entries and
	// (ingress.go) firewall rules.
	ingressFW, err := checkIngress(in, p, servers, tasks, nets, func(enc bool, host, remote string, a netip.Addr) {
		if enc {
			add(peers, host, remote, a)
		} else {
			add(vx, host, remote, a)
		}
	})
	if err != nil {
		return err
	}

	if len(p.Hosts) != len(in.Servers) {
		return fmt.Errorf("%d hosts for %d servers", len(p.Hosts), len(in.Servers))
	}
	for i := range p.Hosts {
		h := &p.Hosts[i]
		s := servers[h.Host]
		if s == nil || (i > 0 && p.Hosts[i-1].Host >= h.Host) {
			return fmt.Errorf("host %s unknown or out of order", h.Host)
		}
		if h.Guests == nil || h.Peers == nil || h.VXLAN == nil || h.Routes == nil || h.Firewall == nil {
			return fmt.Errorf("host %s has a nil slice", h.Host)
		}
		ua := netip.MustParseAddr(s.Address).Unmap()
		port := cmp.Or(s.WireGuardPort, DefaultWireGuardPort)
		if h.Address != ua || h.VTEPMAC != VTEPMAC(ua) || h.WireGuardPort != port {
			return fmt.Errorf("host %s header wrong: %s %s %d", h.Host, h.Address, h.VTEPMAC, h.WireGuardPort)
		}
		// Guests: exactly the tasks placed here.
		nGuests := 0
		for t := range p.Tasks.All() {
			if t.Server == h.Host {
				nGuests++
			}
		}
		if len(h.Guests) != nGuests {
			return fmt.Errorf("host %s has %d guests, want %d", h.Host, len(h.Guests), nGuests)
		}
		for _, g := range h.Guests {
			t := tasks[g.Task]
			if t == nil || t.Server != h.Host || g.Address != t.Address || g.HostIf != HostIf(g.Task) ||
				g.Env[spec.EnvTask] != g.Task || g.Env[spec.EnvAddr] != t.Address.String() ||
				g.Env[spec.EnvIndex] != strconv.Itoa(t.Index) || len(g.HostIf) > 15 {
				return fmt.Errorf("host %s guest %s wrong", h.Host, g.Task)
			}
		}
		// Peers and VXLAN: exactly the remote guests of encrypted, resp.
		// plain, non-local paths with a local end; a derived state's
		// (schema 1.6) as its route groups give them, and none of its own.
		if err := hoststate.CheckDerived(h); err != nil {
			return fmt.Errorf("host %s: %w", h.Host, err)
		}
		filled := h.Filled()
		h = &filled
		got := map[string]map[netip.Addr]bool{}
		for j, pe := range h.Peers {
			if j > 0 && h.Peers[j-1].Server >= pe.Server {
				return fmt.Errorf("host %s peers not sorted", h.Host)
			}
			rs := servers[pe.Server]
			if rs == nil || pe.Endpoint != netip.AddrPortFrom(netip.MustParseAddr(rs.Address).Unmap(), uint16(cmp.Or(rs.WireGuardPort, DefaultWireGuardPort))) || pe.PublicKey != rs.PublicKey {
				return fmt.Errorf("host %s peer %s wrong", h.Host, pe.Server)
			}
			got[pe.Server] = map[netip.Addr]bool{}
			for _, ip := range pe.AllowedIPs {
				if !ip.IsSingleIP() {
					return fmt.Errorf("host %s peer %s allows %s", h.Host, pe.Server, ip)
				}
				got[pe.Server][ip.Addr()] = true
			}
			if len(got[pe.Server]) != len(pe.AllowedIPs) {
				return fmt.Errorf("host %s peer %s repeats an allowed IP", h.Host, pe.Server)
			}
		}
		if err := sameSets("peers", h.Host, got, peers[h.Host]); err != nil {
			return err
		}
		got = map[string]map[netip.Addr]bool{}
		for j, v := range h.VXLAN {
			if j > 0 && h.VXLAN[j-1].Server >= v.Server {
				return fmt.Errorf("host %s vxlan not sorted", h.Host)
			}
			rs := servers[v.Server]
			if rs == nil || v.Underlay != netip.MustParseAddr(rs.Address).Unmap() || v.MAC != VTEPMAC(v.Underlay) {
				return fmt.Errorf("host %s vxlan %s wrong", h.Host, v.Server)
			}
			got[v.Server] = map[netip.Addr]bool{}
			for _, a := range v.Guests {
				got[v.Server][a] = true
			}
			if len(got[v.Server]) != len(v.Guests) || !slices.IsSortedFunc(v.Guests, netip.Addr.Compare) {
				return fmt.Errorf("host %s vxlan %s guests repeated or unsorted", h.Host, v.Server)
			}
		}
		if err := sameSets("vxlan", h.Host, got, vx[h.Host]); err != nil {
			return err
		}
		// Routes: the same (source, dest, encrypt) triples, never two ways
		// for one (source, dest).
		gotRoutes := map[route]bool{}
		way := map[[2]netip.Addr]bool{}
		hr := h.AllRoutes() // route groups expanded
		for j, r := range hr {
			if j > 0 && cmp.Or(hr[j-1].Dest.Compare(r.Dest), cmpBool(hr[j-1].Encrypt, r.Encrypt)) >= 0 {
				return fmt.Errorf("host %s routes not sorted or repeated at %s", h.Host, r.Dest)
			}
			if d := tasks[addrs[r.Dest]]; d == nil || d.Server != r.Server || r.Server == h.Host {
				return fmt.Errorf("host %s route to %s names server %s", h.Host, r.Dest, r.Server)
			}
			for _, src := range r.Sources {
				k := route{src, r.Dest, r.Encrypt}
				if gotRoutes[k] {
					return fmt.Errorf("host %s repeats route %v", h.Host, k)
				}
				gotRoutes[k] = true
				if e, ok := way[[2]netip.Addr{src, r.Dest}]; ok && e != r.Encrypt {
					return fmt.Errorf("host %s routes %s -> %s both encrypted and plain", h.Host, src, r.Dest)
				}
				way[[2]netip.Addr{src, r.Dest}] = r.Encrypt
			}
		}
		if len(gotRoutes) != len(routes[h.Host]) {
			return fmt.Errorf("host %s has %d route entries, needs %d", h.Host, len(gotRoutes), len(routes[h.Host]))
		}
		for k := range routes[h.Host] {
			if !gotRoutes[k] {
				return fmt.Errorf("host %s lacks route %v", h.Host, k)
			}
		}
		// Firewall: one rule per (rule, direction) with a local end, and
		// the ingress legs' rules.
		var ing []FirewallRule
		for _, f := range h.Firewall {
			if f.FromClass == hoststate.IngressClass {
				ing = append(ing, f)
			}
		}
		if err := sameIngressRules(h.Host, ing, ingressFW[h.Host]); err != nil {
			return err
		}
		if len(h.Firewall)-len(ing) != len(fw[h.Host]) {
			return fmt.Errorf("host %s has %d firewall rules, needs %d", h.Host, len(h.Firewall)-len(ing), len(fw[h.Host]))
		}
		for _, f := range h.Firewall {
			if f.FromClass == hoststate.IngressClass {
				continue
			}
			pa := fw[h.Host][fwKey{f.App, f.FromClass, f.ToApp, f.ToClass, f.Protocol, f.Direction}]
			if pa == nil || f.Encrypt != pa.Encrypt || !slices.Equal(f.Ports, pa.Ports) {
				return fmt.Errorf("host %s has unneeded or wrong firewall rule %+v", h.Host, f)
			}
			toApp := cmp.Or(f.ToApp, f.App)
			from, to := [2]string{f.App, f.FromClass}, [2]string{toApp, f.ToClass}
			var src, dst, remote []netip.Addr
			if f.Direction == Egress {
				src, dst = classAddrsOn[[3]string{f.App, f.FromClass, h.Host}], classAddrs[to]
			} else {
				src, dst = classAddrs[from], classAddrsOn[[3]string{toApp, f.ToClass, h.Host}]
				for _, a := range src {
					if tasks[addrs[a]].Server != h.Host {
						remote = append(remote, a)
					}
				}
			}
			if !sameAddrs(f.Sources, src) || !sameAddrs(f.Dests, dst) || !sameAddrs(f.RemoteSources, remote) {
				return fmt.Errorf("host %s firewall rule %s %s->%s has wrong addresses", h.Host, f.Direction, f.FromClass, f.ToClass)
			}
		}
	}
	return nil
}

func cmpTask(x, y *Task) int {
	return cmp.Or(strings.Compare(x.App, y.App), strings.Compare(x.Class, y.Class), cmp.Compare(x.Index, y.Index))
}

// sameAddrs says whether got is want sorted, without duplicates.
func sameAddrs(got, want []netip.Addr) bool {
	w := slices.Clone(want)
	slices.SortFunc(w, netip.Addr.Compare)
	w = slices.Compact(w)
	return slices.Equal(got, w) || (len(got) == 0 && len(w) == 0)
}

func sameSets(what, host string, got, want map[string]map[netip.Addr]bool) error {
	if len(got) != len(want) {
		return fmt.Errorf("host %s has %s for %d servers, needs %d", host, what, len(got), len(want))
	}
	for s, w := range want {
		g := got[s]
		if len(g) != len(w) {
			return fmt.Errorf("host %s %s for %s: %d addresses, want %d", host, what, s, len(g), len(w))
		}
		for a := range w {
			if !g[a] {
				return fmt.Errorf("host %s %s for %s lacks %s", host, what, s, a)
			}
		}
	}
	return nil
}

func cmpBool(x, y bool) int {
	switch {
	case x == y:
		return 0
	case !x:
		return -1
	}
	return 1
}

// checkIngress checks every host's ingress entries against the spec (the
// entry hosts are the servers not down with the published port's labels;
// each lists every task of the class, local ones as such, remote ones with
// the published port's encryption; one source per entry host and app, in
// the app's network and no task's), calls leg for what each remote
// backend adds to the entry host's and the backend host's peers or VXLAN
// entries, and returns the firewall rules each backend host needs, by
// (app, class, protocol): sources and ports.
func checkIngress(in Input, p *Plan, servers map[string]*spec.Server, tasks map[string]*Task, nets map[string]netip.Prefix,
	leg func(enc bool, host, remote string, a netip.Addr)) (map[string]map[[3]string]*FirewallRule, error) {
	type key struct{ host, app, class, proto string }
	got := map[key][]IngressEntry{}
	for _, h := range p.Hosts {
		for _, e := range h.Ingress {
			k := key{h.Host, e.App, e.Class, e.Protocol}
			got[k] = append(got[k], e)
		}
	}
	fw := map[string]map[[3]string]*FirewallRule{}
	n := 0
	for _, a := range in.Apps {
		sources := map[string]netip.Addr{}
		for _, cl := range a.Classes {
			var classTasks []*Task
			for t := range p.Tasks.All() {
				if t.App == a.Name && t.Class == cl.Name {
					classTasks = append(classTasks, &t)
				}
			}
			for _, pub := range cl.Publish {
				for _, s := range in.Servers {
					entry := s.State != spec.ServerDown
					for k, v := range pub.On.Labels {
						entry = entry && s.Labels[k] == v
					}
					if !entry {
						continue
					}
					k := key{s.Name, a.Name, cl.Name, spec.Protocol(pub.Protocol)}
					i := slices.IndexFunc(got[k], func(e IngressEntry) bool { return e.Port == pub.Port })
					if i < 0 {
						return nil, fmt.Errorf("host %s does not publish %s/%s port %d", s.Name, a.Name, cl.Name, pub.Port)
					}
					e := got[k][i]
					got[k] = slices.Delete(got[k], i, i+1)
					n++
					wantAddr := pub.VirtualAddress()
					if !wantAddr.IsValid() {
						wantAddr = netip.MustParseAddr(s.Address)
					}
					if e.Address != wantAddr || e.ToPort != pub.ToPort() || e.Encrypt != pub.Encrypted() || e.Network != nets[a.Name] || len(e.Clients) != len(pub.From) {
						return nil, fmt.Errorf("host %s ingress %+v does not say what %+v publishes", s.Name, e, pub)
					}
					if prev, ok := sources[s.Name]; ok && prev != e.Source {
						return nil, fmt.Errorf("host %s has sources %s and %s in app %s", s.Name, prev, e.Source, a.Name)
					}
					sources[s.Name] = e.Source
					if len(e.Backends) != len(classTasks) {
						return nil, fmt.Errorf("host %s ingress %s/%s:%d has %d backends, the class %d tasks", s.Name, a.Name, cl.Name, pub.Port, len(e.Backends), len(classTasks))
					}
					for _, b := range e.Backends {
						t := tasks[b.Task]
						if t == nil || t.App != a.Name || t.Class != cl.Name || t.Address != b.Address || t.Server != b.Server ||
							b.Local != (t.Server == s.Name) || b.Encrypt != (!b.Local && pub.Encrypted()) {
							return nil, fmt.Errorf("host %s ingress backend %+v wrong", s.Name, b)
						}
						if b.Local {
							continue
						}
						leg(b.Encrypt, s.Name, b.Server, b.Address)
						leg(b.Encrypt, b.Server, s.Name, e.Source)
						if fw[b.Server] == nil {
							fw[b.Server] = map[[3]string]*FirewallRule{}
						}
						fk := [3]string{a.Name, cl.Name, e.Protocol}
						r := fw[b.Server][fk]
						if r == nil {
							r = &FirewallRule{Encrypt: b.Encrypt}
							fw[b.Server][fk] = r
						}
						r.Sources = append(r.Sources, e.Source)
						r.Ports = append(r.Ports, pub.ToPort())
						r.Dests = append(r.Dests, b.Address)
					}
				}
			}
		}
		seen := map[netip.Addr]bool{}
		for host, src := range sources {
			n := nets[a.Name]
			if seen[src] || !n.Contains(src) || src == n.Addr() || src == lastAddr(n) {
				return nil, fmt.Errorf("host %s source %s in app %s repeated or not in %s", host, src, a.Name, n)
			}
			seen[src] = true
			for t := range p.Tasks.All() {
				if t.Address == src && t.App == a.Name {
					return nil, fmt.Errorf("host %s source %s is task %s's address", host, src, t.ID)
				}
			}
		}
	}
	for k, left := range got {
		if len(left) > 0 {
			return nil, fmt.Errorf("host %s publishes %+v, which no spec asks", k.host, left[0])
		}
	}
	return fw, nil
}

// sameIngressRules compares a host's @ingress firewall rules with the
// sources, destinations and ports its backends need.
func sameIngressRules(host string, got []FirewallRule, want map[[3]string]*FirewallRule) error {
	if len(got) != len(want) {
		return fmt.Errorf("host %s has %d ingress firewall rules, needs %d", host, len(got), len(want))
	}
	norm := func(a []netip.Addr) []netip.Addr {
		a = slices.Clone(a)
		slices.SortFunc(a, netip.Addr.Compare)
		return slices.Compact(a)
	}
	for _, f := range got {
		w := want[[3]string{f.App, f.ToClass, f.Protocol}]
		if w == nil {
			return fmt.Errorf("host %s has unneeded ingress rule %+v", host, f)
		}
		ports := slices.Clone(w.Ports)
		slices.Sort(ports)
		if f.Direction != Ingress || f.Encrypt != w.Encrypt || !slices.Equal(f.Ports, slices.Compact(ports)) ||
			!slices.Equal(f.Sources, norm(w.Sources)) || !slices.Equal(f.RemoteSources, norm(w.Sources)) || !slices.Equal(norm(f.Dests), norm(w.Dests)) {
			return fmt.Errorf("host %s ingress rule %+v, want %+v", host, f, *w)
		}
	}
	return nil
}
