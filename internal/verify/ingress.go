package verify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

// ClientClass is the FromClass of an ingress check: the outside client.
const ClientClass = "client"

// IngressProbe is one request from an outside client to a published port:
// an HTTP GET of /healthz carrying Marker in a header, from address From,
// while the underlay interfaces of the Capture servers are watched.
type IngressProbe struct {
	From    netip.Addr
	To      netip.AddrPort
	Marker  []byte
	Timeout time.Duration
	Capture []string
}

// IngressResult is what came back and what the captures saw.
type IngressResult struct {
	Connected, TimedOut, Refused bool
	Body                         string
	RTT                          time.Duration
	MarkerSeen                   []string // captured servers whose underlay showed the marker
	WireGuard                    uint64   // WireGuard frames on them
	Dropped                      bool     // a capture lost frames
}

// OutsideClient sends requests from outside Corridor (the lab's outside
// client): Allowed is its address that the published ports under test let
// in, Denied one they do not.
type OutsideClient interface {
	Addresses() (allowed, denied netip.Addr)
	ProbeIngress(ctx context.Context, p IngressProbe) (IngressResult, error)
}

// IngressChecks proves the published ports of app from an outside client:
// on every entry host of every published port (servers not down carrying
// its labels), requests from the client's allowed address must connect and
// be answered by every task of the class (the balancing spreads them; the
// answer names its task), each leg as the port says (encrypted: WireGuard
// frames on the backend host's underlay and never the marker; plain: the
// marker there; local: no leg); a request from the denied address must
// not connect. A published port whose clients do not hold the allowed
// address is probed from the denied side only. The tasks' own service must
// answer GET /healthz with its task ID (the sample web does).
func IngressChecks(ctx context.Context, oc OutsideClient, app string, apps []spec.App, tasks []compile.Task, servers []spec.Server, opt Options) []Check {
	if opt.Timeout <= 0 {
		opt.Timeout = 2 * time.Second
	}
	var target *spec.App
	for i := range apps {
		if apps[i].Name == app {
			target = &apps[i]
		}
	}
	if target == nil {
		return nil
	}
	allowed, denied := oc.Addresses()
	var checks []Check
	for _, cl := range target.Classes {
		var own []compile.Task
		for _, t := range tasks {
			if t.App == app && t.Class == cl.Name {
				own = append(own, t)
			}
		}
		sortTasks(own)
		for _, p := range cl.Publish {
			clients := p.Clients()
			in := func(a netip.Addr) bool {
				return slices.ContainsFunc(clients, func(c netip.Prefix) bool { return c.Contains(a) })
			}
			for _, s := range servers {
				if !isEntry(s, p) {
					continue
				}
				addr := p.VirtualAddress()
				if !addr.IsValid() {
					addr, _ = netip.ParseAddr(s.Address)
				}
				to := netip.AddrPortFrom(addr, uint16(p.Port))
				var others []string
				for _, o := range servers {
					if o.Name != s.Name {
						others = append(others, o.Name)
					}
				}
				base := Check{App: app, FromApp: app, FromClass: ClientClass, ToClass: cl.Name, FromServer: s.Name,
					ToAddr: to.String(), Protocol: spec.Protocol(p.Protocol), Port: p.Port}
				if in(allowed) {
					checks = append(checks, spreadChecks(ctx, oc, base, allowed, to, own, p.Encrypted(), others, opt)...)
				}
				if !in(denied) {
					c := base
					c.FromTask = "client " + denied.String()
					c.Expect = Denied
					res, err := oc.ProbeIngress(ctx, IngressProbe{From: denied, To: to, Marker: newMarker(), Timeout: opt.Timeout})
					switch {
					case err != nil:
						c.Observed, c.Detail = Incomplete, err.Error()
					case res.Connected:
						c.Observed, c.Detail = Plain, "connected: a client outside the published port's CIDRs got in"
					case res.Refused:
						c.Observed, c.Detail = Open, "refused: the entry host answered a client outside the published port's CIDRs"
					default:
						c.Observed = Denied
					}
					c.OK = c.Observed == c.Expect
					checks = append(checks, c)
				}
			}
		}
	}
	return checks
}

// spreadChecks sends requests from the allowed address until every task
// of the class has answered (or a bound is reached), one check per task.
func spreadChecks(ctx context.Context, oc OutsideClient, base Check, from netip.Addr, to netip.AddrPort, own []compile.Task, encrypt bool, capture []string, opt Options) []Check {
	checks := make([]Check, len(own))
	done := make([]bool, len(own))
	for i, t := range own {
		c := base
		c.FromTask = "client " + from.String()
		c.ToTask, c.ToServer = t.ID, t.Server
		switch {
		case t.Server == base.FromServer:
			c.Expect = Local
		case encrypt:
			c.Expect = Encrypted
		default:
			c.Expect = Plain
		}
		c.Observed, c.Detail = Denied, "never answered"
		checks[i] = c
	}
	left := len(own)
	var last string
	for n := 0; left > 0 && n < 8*len(own)+8 && ctx.Err() == nil; n++ {
		res, err := oc.ProbeIngress(ctx, IngressProbe{From: from, To: to, Marker: newMarker(), Timeout: opt.Timeout, Capture: capture})
		if err != nil {
			last = err.Error()
			continue
		}
		if !res.Connected {
			last = fmt.Sprintf("request %d did not connect (timed out %t, refused %t)", n+1, res.TimedOut, res.Refused)
			continue
		}
		i := slices.IndexFunc(own, func(t compile.Task) bool { return strings.Contains(res.Body, `"`+t.ID+`"`) })
		if i < 0 {
			last = "the answer names no task of the class"
			continue
		}
		if done[i] {
			continue
		}
		c := &checks[i]
		switch {
		case len(res.MarkerSeen) > 0:
			c.Observed, c.Detail = Plain, "marker seen on the underlay of "+strings.Join(res.MarkerSeen, ", ")
		case c.ToServer == c.FromServer:
			c.Observed, c.Detail = Local, fmt.Sprintf("rtt %s", res.RTT.Round(time.Microsecond))
		case res.Dropped:
			c.Observed, c.Detail = Incomplete, "a capture lost frames: the marker's absence proves nothing"
		case res.WireGuard == 0:
			c.Observed, c.Detail = Incomplete, "answered, the marker not seen, but no WireGuard frames either: encryption not proven"
		default:
			c.Observed, c.Detail = Encrypted, fmt.Sprintf("rtt %s, %d WireGuard frames on the backend hosts' underlay", res.RTT.Round(time.Microsecond), res.WireGuard)
		}
		c.Detail = fmt.Sprintf("request %d: %s", n+1, c.Detail)
		done[i] = true
		left--
	}
	for i := range checks {
		c := &checks[i]
		if !done[i] && last != "" {
			c.Detail = "never answered; last: " + last
		}
		c.OK = c.Observed == c.Expect
	}
	return checks
}

// isEntry says whether server s publishes p (as compile decides it).
func isEntry(s spec.Server, p spec.Publish) bool {
	if s.State == spec.ServerDown {
		return false
	}
	for k, v := range p.On.Labels {
		if got, ok := s.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func newMarker() []byte {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return []byte("corridor-verify-" + hex.EncodeToString(b))
}

// AddChecks appends checks made from outside the fleet (a published
// port's clients) to rep, and counts them, in the coverage too.
func (r *Report) AddChecks(checks []Check) {
	r.Coverage.Outside += len(checks)
	for _, c := range checks {
		r.Checks = append(r.Checks, c)
		switch {
		case c.Observed == Incomplete:
			r.Incomplete++
		case c.OK:
			r.Passed++
		default:
			r.Failed++
		}
	}
}
