package hoststate

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// Schema 1.6: peers and VXLAN entries without their lists.
//
// The compiler gives a host a WireGuard peer for server X with, as allowed
// IPs, exactly the destinations of its encrypted route groups that run on
// X, and a VXLAN entry for X with the destinations of its plain groups on
// X (a group without sources has no route, and gives nothing). A state
// whose lists are only that (no links between apps, no published port
// reached through it) is Derived: the compiler leaves the lists empty,
// so that a change that reaches no new server changes neither its peers
// nor its VXLAN entries (a one-class change through the cache copied
// hundreds of them), and readers take them from PeerLists and VXLANLists.
//
// Such a state is written in its derived form only to an agent that reads
// 1.6 (EncodeFor); every other encoding (Encode, AppendJSON, json.Marshal:
// the plan's JSON, its diffs, an agent of 1.5 or older) writes the lists
// filled, byte for byte what the compiler wrote before.

// ReadsDerived reports whether an agent that reads schema (as it reported
// it) reads derived states. Fails closed as ReadsGroups.
func ReadsDerived(schema string) bool {
	ma, mi, err := ParseSchema(schema)
	return schema != "" && err == nil && ma == SchemaMajor && mi >= 6
}

// PeerLists are the allowed IPs of st's peers, in Peers' order: the
// peers' own lists, or for a derived state the ones the route groups
// give. The lists are read-only (a state's own, or made for the call).
func (st *State) PeerLists() [][]netip.Prefix {
	out := make([][]netip.Prefix, len(st.Peers))
	if !st.Derived {
		for i := range st.Peers {
			out[i] = st.Peers[i].AllowedIPs
		}
		return out
	}
	enc, _, _ := st.derive(true, false)
	return enc
}

// VXLANLists is PeerLists for the VXLAN entries' guests.
func (st *State) VXLANLists() [][]netip.Addr {
	out := make([][]netip.Addr, len(st.VXLAN))
	if !st.Derived {
		for i := range st.VXLAN {
			out[i] = st.VXLAN[i].Guests
		}
		return out
	}
	_, plain, _ := st.derive(false, true)
	return plain
}

// Filled is st with its lists written in (not Derived): st itself when it
// is not derived. The peers and VXLAN entries are copies; every other
// list is st's, shared.
func (st *State) Filled() State {
	if !st.Derived {
		return *st
	}
	enc, plain, _ := st.derive(true, true)
	return st.filledWith(enc, plain)
}

// CheckedFilled is Filled for a state CheckDerived accepts, and
// CheckDerived's error otherwise: the lists derived once for both.
func (st *State) CheckedFilled() (State, error) {
	if !st.Derived {
		return *st, nil
	}
	enc, plain, err := st.checkDerived()
	if err != nil {
		return State{}, err
	}
	return st.filledWith(enc, plain), nil
}

func (st *State) filledWith(enc [][]netip.Prefix, plain [][]netip.Addr) State {
	x := *st
	x.Derived = false
	x.Peers = slices.Clone(st.Peers)
	for i := range x.Peers {
		x.Peers[i].AllowedIPs = enc[i]
	}
	x.VXLAN = slices.Clone(st.VXLAN)
	for i := range x.VXLAN {
		x.VXLAN[i].Guests = plain[i]
	}
	return x
}

// derive makes the lists of a derived state, by entry: each destination
// of a group on another server goes to the entry of its server, then each
// list is sorted by address. Two passes over the groups (count, fill), so
// that all the lists of one kind share one backing array of the exact
// size (each list full: an append copies): the server encodes every
// derived host's state filled for an agent of 1.5 or older. A destination
// whose server has no entry of its group's kind is left out, and the
// first one is returned as miss (CheckDerived refuses such a state).
func (st *State) derive(wantEnc, wantPlain bool) (enc [][]netip.Prefix, plain [][]netip.Addr, miss *derivedMiss) {
	var peerAt, vxAt map[string]int
	if wantEnc {
		enc = make([][]netip.Prefix, len(st.Peers))
		peerAt = make(map[string]int, len(st.Peers))
		for i := range st.Peers {
			peerAt[st.Peers[i].Server] = i
		}
	}
	if wantPlain {
		plain = make([][]netip.Addr, len(st.VXLAN))
		vxAt = make(map[string]int, len(st.VXLAN))
		for i := range st.VXLAN {
			vxAt[st.VXLAN[i].Server] = i
		}
	}
	// each calls f with every destination of a wanted group on another
	// server that has an entry of the group's kind, and its entry.
	each := func(f func(enc bool, i int, a netip.Addr)) {
		for k := range st.RouteGroups {
			g := &st.RouteGroups[k]
			if len(g.Sources) == 0 || (g.Encrypt && !wantEnc) || (!g.Encrypt && !wantPlain) {
				continue
			}
			at := vxAt
			if g.Encrypt {
				at = peerAt
			}
			last, li := "", -1 // destinations come in runs on one server
			for j := range g.Dests {
				d := &g.Dests[j]
				if d.Server == st.Host {
					continue
				}
				if d.Server != last || li < 0 {
					i, ok := at[d.Server]
					if !ok {
						i = -1
						if miss == nil {
							miss = &derivedMiss{group: k, dest: j, encrypt: g.Encrypt, server: d.Server}
						}
					}
					last, li = d.Server, i
				}
				if li >= 0 {
					f(g.Encrypt, li, d.Addr)
				}
			}
		}
	}
	nEnc, nPlain := make([]int, len(enc)), make([]int, len(plain))
	totEnc, totPlain := 0, 0
	each(func(e bool, i int, _ netip.Addr) {
		if e {
			nEnc[i]++
			totEnc++
		} else {
			nPlain[i]++
			totPlain++
		}
	})
	encBuf, plainBuf := make([]netip.Prefix, totEnc), make([]netip.Addr, totPlain)
	for i, n := range nEnc {
		if n > 0 {
			enc[i], encBuf = encBuf[:0:n], encBuf[n:]
		}
	}
	for i, n := range nPlain {
		if n > 0 {
			plain[i], plainBuf = plainBuf[:0:n], plainBuf[n:]
		}
	}
	each(func(e bool, i int, a netip.Addr) {
		if e {
			enc[i] = append(enc[i], netip.PrefixFrom(a, a.BitLen()))
		} else {
			plain[i] = append(plain[i], a)
		}
	})
	for i := range enc {
		if !slices.IsSortedFunc(enc[i], comparePrefix) {
			slices.SortFunc(enc[i], comparePrefix)
		}
		enc[i] = slices.Clip(slices.Compact(enc[i]))
	}
	for i := range plain {
		if !slices.IsSortedFunc(plain[i], netip.Addr.Compare) {
			slices.SortFunc(plain[i], netip.Addr.Compare)
		}
		plain[i] = slices.Clip(slices.Compact(plain[i]))
	}
	return enc, plain, miss
}

// derivedMiss is a destination of route group group that derive left out:
// its server has no entry of the group's kind.
type derivedMiss struct {
	group, dest int
	encrypt     bool
	server      string
}

func comparePrefix(x, y netip.Prefix) int {
	return cmp.Or(x.Addr().Compare(y.Addr()), x.Bits()-y.Bits())
}

// CheckDerived refuses a derived state that cannot be derived, so that no
// host applies one whose lists it would have to guess: a peer or VXLAN
// entry that carries a list of its own (a state is derived or not, never
// half), one for which the groups give nothing, a destination of a
// group whose server has no entry of the group's kind, or routes outside
// the groups. A state that is not derived passes.
func CheckDerived(st *State) error {
	if !st.Derived {
		return nil
	}
	_, _, err := st.checkDerived()
	return err
}

// checkDerived is CheckDerived for a derived state, with the lists it
// derived on the way.
func (st *State) checkDerived() ([][]netip.Prefix, [][]netip.Addr, error) {
	if len(st.Routes) > 0 {
		// Routes outside groups name destinations no list would hold.
		return nil, nil, invalid("routes", "a derived state holds its routes as route groups only")
	}
	for i := range st.Peers {
		if len(st.Peers[i].AllowedIPs) > 0 {
			return nil, nil, invalid(fmt.Sprintf("peers[%d].allowedIPs", i), "a derived state's peers carry no allowed IPs")
		}
	}
	for i := range st.VXLAN {
		if len(st.VXLAN[i].Guests) > 0 {
			return nil, nil, invalid(fmt.Sprintf("vxlan[%d].guests", i), "a derived state's VXLAN entries carry no guests")
		}
	}
	enc, plain, miss := st.derive(true, true)
	if miss != nil {
		kind := "VXLAN entry"
		if miss.encrypt {
			kind = "WireGuard peer"
		}
		return nil, nil, invalid(fmt.Sprintf("routeGroups[%d].dests[%d].server", miss.group, miss.dest), "derived state: no %s for server %q", kind, miss.server)
	}
	for i := range enc {
		if len(enc[i]) == 0 {
			return nil, nil, invalid(fmt.Sprintf("peers[%d]", i), "derived state: no route group gives allowed IPs for server %q", st.Peers[i].Server)
		}
	}
	for i := range plain {
		if len(plain[i]) == 0 {
			return nil, nil, invalid(fmt.Sprintf("vxlan[%d]", i), "derived state: no route group gives guests for server %q", st.VXLAN[i].Server)
		}
	}
	return enc, plain, nil
}
