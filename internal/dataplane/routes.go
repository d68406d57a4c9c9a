package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeKey identifies a route of our tables for diffing.
type routeKey struct {
	dst   netip.Prefix
	typ   int
	index int
}

// syncRoutes makes routing table `table` hold one "prefix dev link" route
// per prefix and an unreachable default, and nothing else. With link nil it
// empties the table.
func (dp *Dataplane) syncRoutes(table int, link netlink.Link, prefixes []netip.Prefix) error {
	want := map[routeKey]netlink.Route{}
	if link != nil {
		def := netlink.Route{
			Family: netlink.FAMILY_V4, Table: table, Type: unix.RTN_UNREACHABLE,
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		}
		if !guardOff(GuardUnreachableRoutes) {
			want[routeKey{dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), typ: unix.RTN_UNREACHABLE}] = def
		}
		for _, p := range prefixes {
			r := netlink.Route{
				Family: netlink.FAMILY_V4, Table: table, Type: unix.RTN_UNICAST,
				Scope: netlink.SCOPE_LINK, LinkIndex: link.Attrs().Index,
				Dst: &net.IPNet{IP: ipOf(p.Addr()), Mask: net.CIDRMask(p.Bits(), 32)},
			}
			want[routeKey{dst: p, typ: unix.RTN_UNICAST, index: link.Attrs().Index}] = r
		}
	}
	return dp.syncTable(table, want)
}

// syncRoutesVia makes routing table `table` hold one "prefix dev link"
// route per entry of routes and an unreachable default, and nothing else.
// A prefix that changes device is replaced in place (one "ip route
// replace"), never deleted and added again: no packet meets the table
// without its route.
func (dp *Dataplane) syncRoutesVia(table int, routes map[netip.Prefix]netlink.Link) error {
	want := map[routeKey]netlink.Route{}
	if !guardOff(GuardUnreachableRoutes) {
		want[routeKey{dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), typ: unix.RTN_UNREACHABLE}] = netlink.Route{
			Family: netlink.FAMILY_V4, Table: table, Type: unix.RTN_UNREACHABLE,
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		}
	}
	for p, link := range routes {
		want[routeKey{dst: p, typ: unix.RTN_UNICAST, index: link.Attrs().Index}] = netlink.Route{
			Family: netlink.FAMILY_V4, Table: table, Type: unix.RTN_UNICAST,
			Scope: netlink.SCOPE_LINK, LinkIndex: link.Attrs().Index,
			Dst: &net.IPNet{IP: ipOf(p.Addr()), Mask: net.CIDRMask(p.Bits(), 32)},
		}
	}
	return dp.syncTable(table, want)
}

// syncGuestTable makes table TableGuest hold one "throw addr/32" route per
// local guest and an unreachable default, and nothing else; with local
// nil and empty false it empties the table. Rules RulePrioGuest send there
// every packet from a guest interface that no fwmark rule took (see the
// package documentation): a local guest's address throws the lookup on to
// the main table, where its /32 route is; anything else is unreachable,
// whatever the main table's default route says.
func (dp *Dataplane) syncGuestTable(local []netip.Addr, keep bool) error {
	want := map[routeKey]netlink.Route{}
	if keep {
		want[routeKey{dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), typ: unix.RTN_UNREACHABLE}] = netlink.Route{
			Family: netlink.FAMILY_V4, Table: TableGuest, Type: unix.RTN_UNREACHABLE,
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		}
		for _, a := range local {
			p := netip.PrefixFrom(a, 32)
			want[routeKey{dst: p, typ: unix.RTN_THROW}] = netlink.Route{
				Family: netlink.FAMILY_V4, Table: TableGuest, Type: unix.RTN_THROW,
				Dst: &net.IPNet{IP: ipOf(a), Mask: net.CIDRMask(32, 32)},
			}
		}
	}
	return dp.syncTable(TableGuest, want)
}

// syncTable makes routing table `table` hold exactly the routes of want.
func (dp *Dataplane) syncTable(table int, want map[routeKey]netlink.Route) error {
	cur, err := retryDump(func() ([]netlink.Route, error) {
		return dp.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("list routes of table %d: %w", table, err)
	}
	// Destinations wanted, whatever their device: a route whose device
	// changes is replaced below, not deleted first.
	wantDst := map[routeKey]bool{}
	for k := range want {
		wantDst[routeKey{dst: k.dst, typ: k.typ}] = true
	}
	for _, r := range cur {
		k := keyOf(r)
		if _, ok := want[k]; ok {
			delete(want, k)
			continue
		}
		if wantDst[routeKey{dst: k.dst, typ: k.typ}] {
			continue
		}
		del := r
		if err := dp.nl.RouteDel(&del); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete route %s from table %d: %w", k.dst, table, err)
		}
		dp.changed("deleted route", "table", table, "dst", k.dst, "type", k.typ)
	}
	for k, r := range want {
		if err := dp.nl.RouteReplace(&r); err != nil {
			return fmt.Errorf("add route %s to table %d: %w", k.dst, table, err)
		}
		dp.changed("added route", "table", table, "dst", k.dst, "type", k.typ)
	}
	return nil
}

func keyOf(r netlink.Route) routeKey {
	k := routeKey{typ: r.Type, index: r.LinkIndex}
	if r.Dst == nil {
		k.dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	} else {
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		k.dst = netip.PrefixFrom(a.Unmap(), ones)
	}
	if r.Type != unix.RTN_UNICAST {
		k.index = 0
	}
	return k
}

// wantRules are our ip rules for the local guests; see the package
// documentation.
func (dp *Dataplane) wantRules(d *desired) []*netlink.Rule {
	var guests []guestIf
	if d != nil {
		guests = d.guests
	}
	mask := MarkMask
	mk := func(prio int) *netlink.Rule {
		r := netlink.NewRule()
		r.Family = netlink.FAMILY_V4
		r.Priority = prio
		return r
	}
	var rules []*netlink.Rule
	for _, n := range dp.wgNames() {
		fromWG := mk(RulePrioFromWireGuard)
		fromWG.IifName = n
		fromWG.Table = unix.RT_TABLE_MAIN
		fromWG.SuppressPrefixlen = 0
		rules = append(rules, fromWG)
	}
	fromVX := mk(RulePrioFromVXLAN)
	fromVX.IifName = VXLANName
	fromVX.Table = unix.RT_TABLE_MAIN
	fromVX.SuppressPrefixlen = 0
	enc := mk(RulePrioEncrypt)
	enc.Mark, enc.Mask, enc.Table = MarkEncrypt, &mask, TableEncrypt
	pl := mk(RulePrioPlain)
	pl.Mark, pl.Mask, pl.Table = MarkPlain, &mask, TablePlain
	rules = append(rules, fromVX)
	if !guardOff(GuardFwmarkRule) {
		rules = append(rules, enc)
	}
	rules = append(rules, pl)
	rules = append(rules, ingressRule(d)...)
	rules = append(rules, egressRule(guests, d != nil && len(d.ingress) > 0)...)
	if !guardOff(GuardGuestRoutes) {
		for _, g := range guests {
			r := mk(RulePrioGuest)
			r.IifName = g.name
			r.Table = TableGuest
			rules = append(rules, r)
		}
	}
	return rules
}

func ourRulePrio(p int) bool { return p >= RulePrioIngress && p <= RulePrioGuest }

func sameRule(a *netlink.Rule, b netlink.Rule) bool {
	am, bm := uint32(0), uint32(0)
	if a.Mask != nil {
		am = *a.Mask
	}
	if b.Mask != nil {
		bm = *b.Mask
	}
	asp, bsp := a.SuppressPrefixlen, b.SuppressPrefixlen
	if asp < 0 {
		asp = -1
	}
	if bsp < 0 {
		bsp = -1
	}
	return a.Priority == b.Priority && a.Table == b.Table && a.Mark == b.Mark && am == bm &&
		a.IifName == b.IifName && asp == bsp && !b.Invert && b.Src == nil && b.Dst == nil && b.OifName == ""
}

// syncRules makes our priorities hold exactly our ip rules for guests.
func (dp *Dataplane) syncRules(d *desired) error {
	cur, err := retryDump(func() ([]netlink.Rule, error) { return dp.nl.RuleList(netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list ip rules: %w", err)
	}
	want := dp.wantRules(d)
	found := make([]bool, len(want))
	for _, r := range cur {
		if !ourRulePrio(r.Priority) {
			continue
		}
		matched := false
		for i, w := range want {
			if !found[i] && sameRule(w, r) {
				found[i], matched = true, true
				break
			}
		}
		if matched {
			continue
		}
		del := r
		if err := dp.nl.RuleDel(&del); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete ip rule %d: %w", r.Priority, err)
		}
		dp.changed("deleted ip rule", "priority", r.Priority, "table", r.Table)
	}
	for i, w := range want {
		if found[i] {
			continue
		}
		if err := dp.nl.RuleAdd(w); err != nil {
			return fmt.Errorf("add ip rule %d: %w", w.Priority, err)
		}
		dp.changed("added ip rule", "priority", w.Priority, "table", w.Table)
	}
	return nil
}

// removeRules deletes every rule at our priorities.
func (dp *Dataplane) removeRules() error {
	cur, err := retryDump(func() ([]netlink.Rule, error) { return dp.nl.RuleList(netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list ip rules: %w", err)
	}
	for _, r := range cur {
		if !ourRulePrio(r.Priority) {
			continue
		}
		del := r
		if err := dp.nl.RuleDel(&del); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete ip rule %d: %w", r.Priority, err)
		}
	}
	return nil
}
