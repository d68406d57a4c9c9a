package lab

import (
	"context"
	"net/netip"

	"github.com/corridor-dev/corridor/internal/verify"
)

// VerifyClient is the lab's outside client as verify sees it
// (verify.IngressChecks): its allowed and denied source addresses, and a
// request to a published port from one of them. The lab must have a
// client (Lab.OutsideClient not nil).
type VerifyClient struct{ Lab *Lab }

// Addresses implements verify's outside client.
func (c VerifyClient) Addresses() (netip.Addr, netip.Addr) {
	return c.Lab.OutsideClient.Allowed, c.Lab.OutsideClient.Denied
}

// ProbeIngress implements verify's outside client.
func (c VerifyClient) ProbeIngress(ctx context.Context, p verify.IngressProbe) (verify.IngressResult, error) {
	r, err := c.Lab.Request(ctx, IngressRequest{From: p.From, To: p.To, Path: "/healthz", Marker: p.Marker, Timeout: p.Timeout, Capture: p.Capture})
	return verify.IngressResult{Connected: r.Connected, TimedOut: r.TimedOut, Refused: r.Refused, Body: r.Body, RTT: r.RTT,
		MarkerSeen: r.MarkerSeen, WireGuard: r.WireGuard, Dropped: r.Dropped}, err
}

var _ verify.OutsideClient = VerifyClient{}
