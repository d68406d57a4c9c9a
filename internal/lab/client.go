package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/corridor-dev/corridor/internal/capture"
	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/corridor-dev/corridor/internal/nsrun"
)

// The lab's outside client (issue 15): a namespace on the underlay bridge
// that stands for users outside Corridor, for published ports (ingress)
// to be proved against. It holds .7 of the underlay subnet (kept for lab
// services, beside the outside service's .5 and .6) and two client
// addresses of networks of their own, the same in every lab so that an
// app spec can name them: ClientAllowed in ClientNetwork, which
// examples/shop.yaml publishes web to, and ClientDenied outside it. Every
// server routes both networks to the client's underlay address.
var (
	// ClientNetwork is the lab's client network (TEST-NET-3).
	ClientNetwork = netip.MustParsePrefix("203.0.113.0/24")
	// ClientAllowed is the client's address in ClientNetwork.
	ClientAllowed = netip.MustParseAddr("203.0.113.10")
	// ClientDenied is a client address outside it (TEST-NET-1), which no
	// published port of the examples lets in.
	ClientDenied   = netip.MustParseAddr("192.0.2.10")
	clientDeniedNW = netip.MustParsePrefix("192.0.2.0/24")
)

const clientBridgePort = "cor-client"

// Client is the lab's outside client.
type Client struct {
	Namespace string     `json:"namespace"`
	Underlay  netip.Addr `json:"underlay"` // its address on the underlay
	Allowed   netip.Addr `json:"allowed"`
	Denied    netip.Addr `json:"denied"`
}

func clientNamespace(prefix string) string { return prefix + "cli" }

func clientUnderlay(p netip.Prefix) netip.Addr { return nth(p, 7) }

// makeClient makes the client's namespace, plugs it into the underlay
// bridge and routes the client networks to it from every server.
func (l *Lab) makeClient() error {
	c := &Client{Namespace: clientNamespace(l.Prefix), Underlay: clientUnderlay(l.Underlay), Allowed: ClientAllowed, Denied: ClientDenied}
	l.OutsideClient = c
	if err := l.addNamespace(c.Namespace); err != nil {
		return err
	}
	if err := hostns.Create(c.Namespace); err != nil {
		return err
	}
	ul, err := openNamespace(l.UnderlayNamespace)
	if err != nil {
		return err
	}
	defer ul.Close()
	ch, err := openNamespace(c.Namespace)
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := makeVeth(ul, clientBridgePort, l.Bridge, ch, serverIface, l.MTU); err != nil {
		return err
	}
	if err := linkUp(ch, "lo"); err != nil {
		return err
	}
	if err := addAddress(ch, serverIface, c.Underlay, l.Underlay); err != nil {
		return err
	}
	for _, a := range []netip.Addr{c.Allowed, c.Denied} {
		if err := addAddress(ch, serverIface, a, netip.PrefixFrom(a, 32)); err != nil {
			return err
		}
	}
	for i := range l.Servers {
		if l.Servers[i].IsVM() {
			continue // a VM host's init routes them (vmhosts.go)
		}
		if err := routeClients(l.Servers[i].Namespace, c.Underlay); err != nil {
			return err
		}
	}
	return l.save()
}

// routeClients routes the client networks via the client's underlay
// address in a server's namespace.
func routeClients(namespace string, via netip.Addr) error {
	h, err := openNamespace(namespace)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(serverIface)
	if err != nil {
		return fmt.Errorf("lab: link %s in %s: %w", serverIface, namespace, err)
	}
	for _, n := range []netip.Prefix{ClientNetwork, clientDeniedNW} {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: via.AsSlice(),
			Dst: &net.IPNet{IP: n.Addr().AsSlice(), Mask: net.CIDRMask(n.Bits(), 32)}}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("lab: route %s via %s in %s: %w", n, via, namespace, err)
		}
	}
	return nil
}

// IngressRequest is one request from the outside client to a published
// port: an HTTP GET of Path carrying Marker in a header, from source From.
type IngressRequest struct {
	From    netip.Addr
	To      netip.AddrPort
	Path    string
	Marker  []byte
	Timeout time.Duration
	// Capture names the servers whose underlay interface is watched for
	// the marker during the request (the hosts a leg may reach).
	Capture []string
}

// IngressResponse is what came back and what the captures saw.
type IngressResponse struct {
	Connected bool
	TimedOut  bool
	Refused   bool
	Status    string // the HTTP status line
	Body      string
	RTT       time.Duration
	// MarkerSeen lists the captured servers whose underlay showed the
	// marker; WireGuard counts WireGuard frames on them.
	MarkerSeen []string
	WireGuard  uint64
	Dropped    bool // a capture lost frames: an absence proves nothing
}

// Request sends r from the lab's outside client.
func (l *Lab) Request(ctx context.Context, r IngressRequest) (IngressResponse, error) {
	var out IngressResponse
	if l.OutsideClient == nil {
		return out, fmt.Errorf("lab: no outside client (a lab made by an older corridor?)")
	}
	var caps []*capture.Capture
	var capNames []string
	for _, s := range l.Servers {
		for _, name := range r.Capture {
			if s.Name != name {
				continue
			}
			ns, iface := l.captureAt(&s)
			c, err := capture.Start(ctx, hostns.Path(ns), iface, r.Marker)
			if err != nil {
				return out, fmt.Errorf("lab: capture on %s: %w", s.Name, err)
			}
			caps = append(caps, c)
			capNames = append(capNames, s.Name)
		}
	}
	defer func() {
		for _, c := range caps {
			c.Stop()
		}
	}()
	ns, err := netns.GetFromPath(hostns.Path(l.OutsideClient.Namespace))
	if err != nil {
		return out, fmt.Errorf("lab: open %s: %w", l.OutsideClient.Namespace, err)
	}
	defer ns.Close()
	var conn net.Conn
	start := time.Now()
	err = nsrun.DoHandle(ns, func() error {
		d := net.Dialer{Timeout: r.Timeout, LocalAddr: &net.TCPAddr{IP: r.From.AsSlice()}}
		var err error
		conn, err = d.DialContext(ctx, "tcp4", r.To.String())
		return err
	})
	if err != nil {
		var ne net.Error
		switch {
		case strings.Contains(err.Error(), "connection refused"):
			out.Refused = true
		case errors.As(err, &ne) && ne.Timeout():
			out.TimedOut = true
		default:
			return out, err
		}
		return out, nil
	}
	out.Connected = true
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(r.Timeout + 2*time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\nX-Corridor-Marker: %s\r\n\r\n", r.Path, r.To, r.Marker)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return out, fmt.Errorf("lab: response from %s: %w", r.To, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	out.RTT = time.Since(start)
	out.Status = resp.Proto + " " + resp.Status
	out.Body = string(body)
	for i, c := range caps {
		res, err := c.Stop()
		if err != nil {
			return out, err
		}
		if seen, _ := res.Contains(r.Marker); seen {
			out.MarkerSeen = append(out.MarkerSeen, capNames[i])
		}
		for _, n := range res.WireGuard {
			out.WireGuard += n
		}
		out.Dropped = out.Dropped || res.Dropped > 0
	}
	return out, nil
}
