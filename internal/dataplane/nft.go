package dataplane

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

var corridorTable = &nftables.Table{Name: NFTTable, Family: nftables.TableFamilyINet}

// chains returns the chains of table inet corridor, base chains first.
func chains() []*nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return []*nftables.Chain{
		{Name: chainPrerouting, Table: corridorTable, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept},
		{Name: chainPostrouting, Table: corridorTable, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityMangle, Policy: &accept},
		{Name: chainForward, Table: corridorTable, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept},
		{Name: chainInput, Table: corridorTable, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept},
		{Name: chainGuestOut, Table: corridorTable},
		{Name: chainGuestIn, Table: corridorTable},
		{Name: chainPreGuest, Table: corridorTable},
		{Name: chainPrePlain, Table: corridorTable},
		{Name: chainPreEnc, Table: corridorTable},
		{Name: chainFwdGuest, Table: corridorTable},
		{Name: chainFwdPlain, Table: corridorTable},
		{Name: chainFwdEnc, Table: corridorTable},
		{Name: chainPreSource, Table: corridorTable},
		natChains()[0],
		natChains()[1],
		ingressChain(),
		rawChains()[0],
		rawChains()[1],
	}
}

// firewallCurrent reports whether table inet corridor already holds rs: the
// fingerprint comment of the first forward rule matches, every chain has the
// expected number of rules, and the counters are those of rs.
func (dp *Dataplane) firewallCurrent(rs *ruleset) (bool, error) {
	tables, err := retryDump(func() ([]*nftables.Table, error) { return dp.nft.ListTablesOfFamily(nftables.TableFamilyINet) })
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == NFTTable }) {
		return false, nil
	}
	existing, err := retryDump(func() ([]*nftables.Chain, error) { return dp.nft.ListChainsOfTableFamily(nftables.TableFamilyINet) })
	if err != nil {
		return false, fmt.Errorf("list nftables chains: %w", err)
	}
	var names []string
	for _, c := range existing {
		if c.Table.Name == NFTTable {
			names = append(names, c.Name)
		}
	}
	slices.Sort(names)
	var want []string
	for _, c := range chains() {
		want = append(want, c.Name)
	}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		return false, nil
	}
	for chain, n := range rs.ruleCount() {
		rules, err := retryDump(func() ([]*nftables.Rule, error) {
			return dp.nft.GetRules(corridorTable, &nftables.Chain{Name: chain, Table: corridorTable})
		})
		if err != nil {
			return false, fmt.Errorf("list rules of chain %s: %w", chain, err)
		}
		if len(rules) != n {
			return false, nil
		}
		if chain == chainForward && n > 0 {
			c, _ := userdata.GetString(rules[0].UserData, userdata.TypeComment)
			if c != fingerprintPrefix+rs.hash {
				return false, nil
			}
		}
	}
	have, err := dp.counterNames()
	if err != nil {
		return false, err
	}
	return slices.Equal(have, rs.counters), nil
}

func (dp *Dataplane) counterNames() ([]string, error) {
	objs, err := retryDump(func() ([]nftables.Obj, error) { return dp.nft.GetObjects(corridorTable) })
	if err != nil {
		return nil, fmt.Errorf("list nftables counters: %w", err)
	}
	var names []string
	for _, o := range objs {
		if c, ok := o.(*nftables.CounterObj); ok {
			names = append(names, c.Name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// applyFirewall replaces the content of table inet corridor by rs in one
// batch, unless it already holds rs. It reports whether it changed anything.
//
// The batch adds the table if missing, flushes the rules of all its chains
// and adds the new ones. This flush is the one exception to "never flush":
// the kernel applies the whole batch as one transaction, so packets see
// either the old ruleset or the new one, never an empty or partial one.
// Anonymous sets are bound to their rules and go away with them; named
// counters that are still wanted are kept, so drop counts survive.
func (dp *Dataplane) applyFirewall(rs *ruleset) (bool, error) {
	ok, err := dp.firewallCurrent(rs)
	if err != nil {
		return false, err
	}
	if ok {
		return false, nil
	}
	var have []string
	tables, err := retryDump(func() ([]*nftables.Table, error) { return dp.nft.ListTablesOfFamily(nftables.TableFamilyINet) })
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	exists := slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == NFTTable })
	var oldChains []string
	if exists {
		if have, err = dp.counterNames(); err != nil {
			return false, err
		}
		cs, err := retryDump(func() ([]*nftables.Chain, error) { return dp.nft.ListChainsOfTableFamily(nftables.TableFamilyINet) })
		if err != nil {
			return false, fmt.Errorf("list nftables chains: %w", err)
		}
		for _, c := range cs {
			if c.Table.Name == NFTTable {
				oldChains = append(oldChains, c.Name)
			}
		}
	}

	// Only a kernel with flowtables can hold ours (from this process or
	// an earlier one, offloading or not since).
	hadFlowtable := false
	if exists && dp.flowtables {
		fts, err := retryDump(func() ([]*nftables.Flowtable, error) { return dp.nft.ListFlowtables(corridorTable) })
		if err != nil {
			return false, fmt.Errorf("list nftables flowtables: %w", err)
		}
		hadFlowtable = slices.ContainsFunc(fts, func(f *nftables.Flowtable) bool { return f.Name == FlowtableName })
	}

	c := dp.nft
	c.AddTable(corridorTable)
	if exists {
		c.FlushTable(corridorTable)
	}
	// The offloaded flows end with the ruleset they were offloaded under:
	// the flowtable goes (its rules were flushed just before, which frees
	// it) and comes back empty, in this same transaction (offloadPlain).
	if hadFlowtable {
		c.DelFlowtable(flowtable())
	}
	if rs.offload {
		c.AddFlowtable(flowtable())
	}
	wantChains := map[string]*nftables.Chain{}
	for _, ch := range chains() {
		wantChains[ch.Name] = ch
	}
	for _, name := range oldChains {
		if _, ok := wantChains[name]; !ok {
			c.DelChain(&nftables.Chain{Name: name, Table: corridorTable})
		}
	}
	for _, ch := range chains() {
		c.AddChain(ch)
	}
	for _, name := range rs.counters {
		if !slices.Contains(have, name) {
			c.AddObj(&nftables.CounterObj{Table: corridorTable, Name: name})
		}
	}
	for i, r := range rs.rules {
		var sets []*nftables.Set
		for _, as := range r.sets {
			s := as.set // a copy: IDs are given anew for every batch
			s.Table = corridorTable
			s.ID = 0
			if err := addSet(c, &s, as.elems); err != nil {
				return false, fmt.Errorf("nftables set for %s rule %q: %w", r.chain, r.desc, err)
			}
			sets = append(sets, &s)
		}
		rule := &nftables.Rule{
			Table: corridorTable,
			Chain: wantChains[r.chain],
			Exprs: r.build(sets),
		}
		if r.chain == chainForward && isFirstOf(rs, i) {
			rule.UserData = userdata.AppendString(nil, userdata.TypeComment, fingerprintPrefix+rs.hash)
		}
		c.AddRule(rule)
	}
	for _, name := range have {
		if !slices.Contains(rs.counters, name) {
			c.DeleteObject(&nftables.CounterObj{Table: corridorTable, Name: name})
		}
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("apply nftables table inet %s: %w", NFTTable, err)
	}
	return true, nil
}

// setElemsPerMessage bounds the elements sent in one netlink message. A
// message carries its elements in one nested attribute, whose length is
// 16 bits: past 64 KiB it wraps, and the kernel refuses the whole batch
// (ENOENT: the rule then names a set that was never made). An element of
// our largest kind (two IPv4 addresses and a mark, or an interval with its
// end) takes under 100 bytes, so 256 of them stay well inside. An app of
// thousands of tasks gives sets of thousands of addresses.
const setElemsPerMessage = 256

// addSet adds s to the batch with its elements, in messages of at most
// setElemsPerMessage elements. The kernel takes further elements of an
// anonymous, constant set while no rule is bound to it yet, which is the
// case until the rule that follows in the same batch: nft does the same
// for large sets. (The library refuses SetAddElements on a set marked
// anonymous, though its message is the one AddSet sends for the first
// elements: hence the copy that is not marked.)
func addSet(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement) error {
	first := elems[:min(len(elems), setElemsPerMessage)]
	if len(first) < len(elems) && s.Constant {
		// The library sizes a constant set by the elements AddSet is
		// given; the kernel refuses more than that (ENFILE). Size gives
		// it the whole count (its description comes last, and wins).
		s.Size = uint32(len(elems))
	}
	if err := c.AddSet(s, first); err != nil {
		return err
	}
	rest := elems[len(first):]
	if len(rest) == 0 {
		return nil
	}
	more := *s
	more.Anonymous = false
	for len(rest) > 0 {
		n := min(len(rest), setElemsPerMessage)
		if err := c.SetAddElements(&more, rest[:n]); err != nil {
			return err
		}
		rest = rest[n:]
	}
	return nil
}

// isFirstOf reports whether rule i is the first of its chain.
func isFirstOf(rs *ruleset, i int) bool {
	for j := 0; j < i; j++ {
		if rs.rules[j].chain == rs.rules[i].chain {
			return false
		}
	}
	return true
}

// removeFirewall deletes table inet corridor if it exists.
func (dp *Dataplane) removeFirewall() error {
	tables, err := retryDump(func() ([]*nftables.Table, error) { return dp.nft.ListTablesOfFamily(nftables.TableFamilyINet) })
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == NFTTable }) {
		return nil
	}
	dp.nft.DelTable(corridorTable)
	if err := dp.nft.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete nftables table inet %s: %w", NFTTable, err)
	}
	return nil
}

// DropCounter is one firewall drop counter; see the package documentation
// for the kinds.
type DropCounter struct {
	Kind      string `json:"kind"`
	App       string `json:"app,omitempty"`
	FromClass string `json:"fromClass,omitempty"`
	ToClass   string `json:"toClass,omitempty"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
}

// dropCounters reads our named counters.
func (dp *Dataplane) dropCounters() ([]DropCounter, error) {
	objs, err := retryDump(func() ([]nftables.Obj, error) { return dp.nft.GetObjects(corridorTable) })
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("read nftables counters: %w", err)
	}
	var out []DropCounter
	for _, o := range objs {
		c, ok := o.(*nftables.CounterObj)
		if !ok {
			continue
		}
		parts := strings.Split(c.Name, ":")
		dc := DropCounter{Kind: parts[0], Packets: c.Packets, Bytes: c.Bytes}
		switch {
		case (dc.Kind == DropPair || dc.Kind == Allowed) && len(parts) == 4:
			dc.App, dc.FromClass, dc.ToClass = parts[1], parts[2], parts[3]
		case dc.Kind == DropEgress && len(parts) == 3:
			dc.App, dc.FromClass = parts[1], parts[2]
		case dc.Kind == DropIngress && len(parts) == 3:
			dc.App, dc.ToClass = parts[1], parts[2]
		case len(parts) == 1:
		default:
			continue
		}
		out = append(out, dc)
	}
	slices.SortFunc(out, func(a, b DropCounter) int {
		return strings.Compare(a.Kind+":"+a.App+":"+a.FromClass+":"+a.ToClass, b.Kind+":"+b.App+":"+b.FromClass+":"+b.ToClass)
	})
	return out, nil
}
