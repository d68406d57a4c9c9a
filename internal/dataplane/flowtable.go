package dataplane

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// flowtableProbeTable is the throwaway table ProbeFlowtables adds and
// removes (the "cor" prefix, like every kernel object of ours).
const flowtableProbeTable = "corftprobe"

// ProbeFlowtables reports whether the kernel of the data plane's namespace
// offers nftables flowtables (the inet flowtable type of
// nf_flow_table_inet). It adds, in one batch, a table holding an empty
// flowtable, and removes it again: a kernel without flowtables refuses the
// whole batch (ENOENT or EOPNOTSUPP), so nothing stays behind either way.
// Where they are, and Config.NoFlowOffload is false, established plain
// flows are offloaded to flowtable corflows (offloadPlain says how the
// fail-closed checks stay true).
func (dp *Dataplane) ProbeFlowtables() (bool, error) {
	return probeFlowtables(dp.nft)
}

func probeFlowtables(c *nftables.Conn) (bool, error) {
	t := &nftables.Table{Name: flowtableProbeTable, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.AddFlowtable(&nftables.Flowtable{
		Table:    t,
		Name:     flowtableProbeTable,
		Hooknum:  nftables.FlowtableHookIngress,
		Priority: nftables.FlowtablePriorityFilter,
	})
	err := c.Flush()
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("dataplane: probe nftables flowtables: %w", err)
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return true, fmt.Errorf("dataplane: remove flowtable probe table %s: %w", flowtableProbeTable, err)
	}
	return true, nil
}

// noteFlowtables probes for flowtables on the first Apply of this process
// and logs the answer (with dp.mu held).
func (dp *Dataplane) noteFlowtables() {
	if dp.flowtablesProbed {
		return
	}
	dp.flowtablesProbed = true
	ok, err := dp.ProbeFlowtables()
	if err != nil {
		dp.log.Warn("could not tell whether the kernel has nftables flowtables", "err", err)
		return
	}
	dp.flowtables = ok
	why := map[string]string{
		"on":          "established plain flows skip the forwarding path (flowtable " + FlowtableName + ")",
		"off":         "turned off (--flow-offload=false)",
		"unavailable": "the kernel has no nftables flowtables (nf_flow_table_inet)",
	}
	dp.log.Info("flow offload", "mode", dp.offloadMode(), "why", why[dp.offloadMode()])
}

// FlowtableName is the flowtable of table inet corridor that established
// plain flows are offloaded to, where the kernel has flowtables.
const FlowtableName = "corflows"

// offloading reports whether plain flows are offloaded (with dp.mu held):
// the kernel has flowtables and Config.NoFlowOffload is false.
func (dp *Dataplane) offloading() bool {
	return dp.flowtables && !dp.cfg.NoFlowOffload
}

// offloadMode is Status.FlowOffload (with dp.mu held): empty before the
// first Apply has probed the kernel.
func (dp *Dataplane) offloadMode() string {
	switch {
	case !dp.flowtablesProbed:
		return ""
	case dp.offloading():
		return "on"
	case dp.flowtables:
		return "off"
	}
	return "unavailable"
}

// offloadPlain adds, just before the forward chain's conntrack accept, the
// rules that hand an established plain connection to flowtable corflows:
// from then on its packets go from the input device's ingress hook
// straight to the output device, skipping prerouting, routing, forward and
// postrouting (issue 19: the plain path's cost against raw VXLAN is those
// hooks and lookups). Only where the fail-closed checks stay true for
// every later packet of the flow:
//
//   - Only a connection whose recorded path (ct mark) is plain, between a
//     guest interface and corv0 in either direction, and not a published
//     port's (MarkIngress). An encrypted pair's connection is never
//     offloaded, so each of its packets still meets the path check that
//     keeps it off every device but WireGuard's; nor are egress, ingress
//     or guest-to-guest connections on one host.
//   - Only on a packet of the connection's original direction. An entry
//     holds both directions, the other one routed by a lookup with this
//     packet's mark; on the host where a guest opened the connection, its
//     packets' path comes from the pair's current mark (a policy change
//     re-marks them) and its replies' from the route to the guest, but
//     were a reply from corv0 to make the entry, the guest's packets
//     would be pinned to the plain path its mark no longer gives (a pair
//     just made encrypted, while the other host still sends in plain).
//     On the host the connection came to, the replies take the path of
//     its ct mark in both cases, as on the forwarding path.
//   - Only a packet that has passed every check before this point: the
//     path check of a guest's packet, the device check of a tunnel's.
//   - A flow entry is keyed by its input interface as well as its
//     addresses and ports, so a packet injected on another device (a
//     guest spoofing a neighbour, a VXLAN frame for an encrypted pair's
//     4-tuple) finds no entry and takes the checked path.
//   - What the checks depend on is the policy, and the policy changes only
//     with the ruleset: every batch that replaces the ruleset deletes the
//     flowtable and makes it anew (applyFirewall), which ends every
//     offloaded flow in the same transaction. The kernel unregisters the
//     old flowtable's hooks before the commit returns, so no packet is
//     forwarded by an entry made under the old policy once the new one is
//     in place; the flows' next packets meet the new rules, and are
//     offloaded again only if those still let them through.
//   - A FIN or RST, a route change on the way (its cached route goes
//     stale) or an interface going away ends a flow's entry in the kernel
//     itself.
func (b *rulesetBuilder) offloadPlain(guestAny string) {
	for _, dirs := range [][2]string{{guestAny, VXLANName}, {VXLANName, guestAny}} {
		b.add(chainForward, ctState(expr.CtStateBitESTABLISHED, "established", false), ctOriginal(),
			ctMarkMasked(MarkMask|MarkIngress, MarkPlain),
			ifMatch(expr.MetaKeyIIFNAME, dirs[0], expr.CmpOpEq), ifMatch(expr.MetaKeyOIFNAME, dirs[1], expr.CmpOpEq),
			plain("flow add @"+FlowtableName, &expr.FlowOffload{Name: FlowtableName}))
	}
}

// flowtable is corflows as the firewall batch makes it: with no devices
// (the kernel refuses a batch naming an interface that does not exist, and
// a guest's may be on its way out); syncFlowtable adds them. With its
// counter flag, offloaded packets still count in their conntrack entries.
func flowtable() *nftables.Flowtable {
	return &nftables.Flowtable{
		Table:    corridorTable,
		Name:     FlowtableName,
		Hooknum:  nftables.FlowtableHookIngress,
		Priority: nftables.FlowtablePriorityFilter,
		Flags:    nftables.FlowtableFlagsCounter,
	}
}

// syncFlowtable adds to corflows the interfaces of d's guests that exist
// (present) and corv0, when they are not in it yet: a flow is offloaded on
// the interfaces it arrives on. The kernel drops an interface from the
// flowtable by itself when the interface goes away. Adding interfaces
// leaves the offloaded flows as they are. A failure is logged and not
// returned: without the interfaces, flows only take the slower path, and
// the next Apply tries again.
func (dp *Dataplane) syncFlowtable(d *desired, present map[string]bool) {
	if !d.offload {
		return
	}
	fts, err := retryDump(func() ([]*nftables.Flowtable, error) { return dp.nft.ListFlowtables(corridorTable) })
	if err != nil {
		dp.log.Warn("could not read flowtable "+FlowtableName, "err", err)
		return
	}
	have := map[string]bool{}
	found := false
	for _, ft := range fts {
		if ft.Name == FlowtableName {
			found = true
			for _, dev := range ft.Devices {
				have[strings.TrimRight(dev, "\x00")] = true
			}
		}
	}
	if !found {
		dp.log.Warn("flowtable " + FlowtableName + " is missing from table inet " + NFTTable + ": the next Apply makes it")
		return
	}
	var add []string
	for _, name := range append([]string{VXLANName}, guestNames(d)...) {
		if present[name] && !have[name] {
			add = append(add, name)
		}
	}
	if len(add) == 0 {
		return
	}
	ft := flowtable()
	ft.Devices = add
	dp.nft.AddFlowtable(ft)
	if err := dp.nft.Flush(); err != nil {
		dp.log.Warn("could not add interfaces to flowtable "+FlowtableName, "interfaces", add, "err", err)
		return
	}
	dp.changed("added interfaces to flowtable "+FlowtableName, "interfaces", strings.Join(add, ","))
}

func guestNames(d *desired) []string {
	out := make([]string, len(d.guests))
	for i, g := range d.guests {
		out[i] = g.name
	}
	return out
}
