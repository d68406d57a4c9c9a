package lab

import (
	"fmt"
	"github.com/corridor-dev/corridor/internal/hostns"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
)

// The lab's outside service (issue 15): a namespace on the underlay
// bridge that stands for the world outside Corridor, for egress to be
// proved against. It holds two addresses of the underlay subnet in the
// range kept for lab services (.5 and .6: no server's), and a TCP service
// (`corridor sample db`) listening on OutsidePort on both: an app's
// egress names one of them, and the other, or another port, must stay
// unreachable. It is a plain host of the underlay: it routes nothing,
// and the lab's gateway counter does not see what is bridged to it.
const (
	// RoleOutside is the outside service's process.
	RoleOutside = "outside"
	// OutsidePort is the outside service's TCP port.
	OutsidePort = 8443
	// outsideBridgePort is the underlay-namespace end of its veth.
	outsideBridgePort = "cor-outside"
	// outsideDataDir is its data directory in the lab's directory.
	outsideDataDir = "outside"
)

// Outside is the lab's outside service.
type Outside struct {
	Namespace string `json:"namespace"`
	// Addresses: Addresses[0] is the one tests name in egress, Addresses[1]
	// another outside address that answers too.
	Addresses []netip.Addr `json:"addresses"`
	Port      int          `json:"port"`
	Process   *Process     `json:"process,omitempty"`
}

func outsideNamespace(prefix string) string { return prefix + "out" }

func outsideAddrs(p netip.Prefix) []netip.Addr { return []netip.Addr{nth(p, 5), nth(p, 6)} }

// makeOutside makes the outside service's namespace, plugs it into the
// underlay bridge and starts its service.
func (l *Lab) makeOutside() error {
	o := &Outside{Namespace: outsideNamespace(l.Prefix), Addresses: outsideAddrs(l.Underlay), Port: OutsidePort}
	l.Outside = o
	if err := l.addNamespace(o.Namespace); err != nil {
		return err
	}
	if err := hostns.Create(o.Namespace); err != nil {
		return err
	}
	ul, err := openNamespace(l.UnderlayNamespace)
	if err != nil {
		return err
	}
	defer ul.Close()
	oh, err := openNamespace(o.Namespace)
	if err != nil {
		return err
	}
	defer oh.Close()
	if err := makeVeth(ul, outsideBridgePort, l.Bridge, oh, serverIface, l.MTU); err != nil {
		return err
	}
	if err := linkUp(oh, "lo"); err != nil {
		return err
	}
	for _, a := range o.Addresses {
		if err := addAddress(oh, serverIface, a, l.Underlay); err != nil {
			return err
		}
	}
	data := filepath.Join(l.Dir, outsideDataDir)
	if err := os.MkdirAll(data, 0o700); err != nil {
		return fmt.Errorf("lab: outside service: %w", err)
	}
	args := []string{l.Binary, "sample", "db", "--listen", ":" + strconv.Itoa(o.Port), "--data", data}
	p, err := spawn(RoleOutside, "outside", o.Namespace, filepath.Join(l.Dir, "logs", "outside.log"), args)
	if p != nil {
		o.Process = p
		if serr := l.save(); serr != nil {
			return serr
		}
	}
	return err
}
