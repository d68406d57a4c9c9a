package hoststate

import (
	"encoding/json"
	"net/netip"
	"strconv"
)

// Encode is json.Marshal(st), byte for byte (TestEncodeSameAsMarshal), made
// faster: the lists that grow with the fleet (peers, VXLAN entries, routes,
// firewall rules) are written by hand instead of by encoding/json's
// reflection, the rest (guests, outbound, ingress, staged, hold: a host's
// own few) by json.Marshal. The server encodes every host's state after
// each compile (1,000 hosts, 205 MB of JSON in the compile benchmark's
// fleet), which cost more than the compile.
func (st *State) Encode() ([]byte, error) {
	return st.AppendJSON(make([]byte, 0, st.sizeHint()))
}

// sizeHint is a guess at the length of st's JSON, to size the buffer once.
func (st *State) sizeHint() int {
	n := 512 + 1024*len(st.Guests) + 160*len(st.Firewall)
	for i := range st.Peers {
		n += 160 + 24*len(st.Peers[i].AllowedIPs)
	}
	for i := range st.VXLAN {
		n += 120 + 16*len(st.VXLAN[i].Guests)
	}
	for i := range st.Routes {
		n += 80 + 16*len(st.Routes[i].Sources)
	}
	for i := range st.RouteGroups {
		g := &st.RouteGroups[i]
		n += 80 + 16*len(g.Sources) + 60*len(g.Dests)
	}
	for i := range st.Firewall {
		f := &st.Firewall[i]
		n += 16 * (len(f.Sources) + len(f.Dests) + len(f.RemoteSources))
	}
	return n
}

// AppendJSON appends json.Marshal(st) to b: a derived state (schema 1.6,
// derived.go) with its lists filled, as the compiler wrote it before
// (Filled), so that a plan's JSON, its goldens and its diffs do not
// depend on the form the compiler keeps a state in.
func (st *State) AppendJSON(b []byte) ([]byte, error) {
	return st.appendJSON(b, false, false)
}

// MarshalJSON is AppendJSON: every JSON of a state but EncodeFor's for an
// agent of schema 1.6 is the filled form.
func (st State) MarshalJSON() ([]byte, error) {
	return st.appendJSON(make([]byte, 0, st.sizeHint()), false, false)
}

// appendJSON appends json.Marshal(st.Filled()) to b, or with expand
// json.Marshal(st.Filled().Expanded()): the routes of st's groups written
// into routes, and no routeGroups. With derived, a derived state is
// written as it is: "derived":true and no lists.
func (st *State) appendJSON(b []byte, expand, derived bool) ([]byte, error) {
	var err error
	var encLists [][]netip.Prefix
	var plainLists [][]netip.Addr
	fill := st.Derived && !derived
	if fill {
		encLists, plainLists, _ = st.derive(true, true)
	}
	b = append(b, '{')
	if st.Schema != "" {
		b = append(b, `"schema":`...)
		b = AppendString(b, st.Schema)
		b = append(b, ',')
	}
	b = append(b, `"host":`...)
	b = AppendString(b, st.Host)
	b = append(b, `,"address":`...)
	b = AppendAddr(b, st.Address)
	b = append(b, `,"vtepMAC":`...)
	b = AppendString(b, st.VTEPMAC)
	b = append(b, `,"wireguardPort":`...)
	b = strconv.AppendInt(b, int64(st.WireGuardPort), 10)
	if st.KeyGeneration != 0 {
		b = append(b, `,"keyGeneration":`...)
		b = strconv.AppendInt(b, st.KeyGeneration, 10)
	}
	if st.RotationPhase != "" {
		b = append(b, `,"rotationPhase":`...)
		b = AppendString(b, st.RotationPhase)
	}
	if st.PublicKey != "" {
		b = append(b, `,"publicKey":`...)
		b = AppendString(b, st.PublicKey)
	}
	if st.Derived && derived {
		b = append(b, `,"derived":true`...)
	}
	b = append(b, `,"guests":`...)
	if b, err = appendMarshal(b, st.Guests); err != nil {
		return nil, err
	}

	b = append(b, `,"peers":`...)
	if st.Peers == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range st.Peers {
			p := &st.Peers[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"server":`...)
			b = AppendString(b, p.Server)
			b = append(b, `,"publicKey":`...)
			b = AppendString(b, p.PublicKey)
			if p.NextPublicKey != "" {
				b = append(b, `,"nextPublicKey":`...)
				b = AppendString(b, p.NextPublicKey)
			}
			b = append(b, `,"endpoint":`...)
			b = appendAddrPort(b, p.Endpoint)
			b = append(b, `,"allowedIPs":`...)
			if fill {
				b = appendPrefixes(b, encLists[i])
			} else {
				b = appendPrefixes(b, p.AllowedIPs)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}

	b = append(b, `,"vxlan":`...)
	if st.VXLAN == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range st.VXLAN {
			v := &st.VXLAN[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"server":`...)
			b = AppendString(b, v.Server)
			b = append(b, `,"underlay":`...)
			b = AppendAddr(b, v.Underlay)
			b = append(b, `,"mac":`...)
			b = AppendString(b, v.MAC)
			b = append(b, `,"guests":`...)
			if fill {
				b = appendAddrs(b, plainLists[i])
			} else {
				b = appendAddrs(b, v.Guests)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}

	b = append(b, `,"routes":`...)
	if st.Routes == nil && (!expand || len(st.RouteGroups) == 0) {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		// Consecutive routes mostly share their sources (the same local
		// guests to every task of a class): their JSON is written once
		// and copied.
		var lastSrc []netip.Addr // the last sources written, and their JSON
		var lastJSON []byte
		first := true
		write := func(r Route, _, _ int) bool {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, `{"sources":`...)
			if len(r.Sources) > 0 && len(r.Sources) == len(lastSrc) && &r.Sources[0] == &lastSrc[0] {
				b = append(b, lastJSON...)
			} else {
				n := len(b)
				b = appendAddrs(b, r.Sources)
				lastSrc, lastJSON = r.Sources, b[n:len(b):len(b)]
			}
			b = append(b, `,"dest":`...)
			b = AppendAddr(b, r.Dest)
			b = append(b, `,"server":`...)
			b = AppendString(b, r.Server)
			b = append(b, `,"encrypt":`...)
			b = strconv.AppendBool(b, r.Encrypt)
			b = append(b, '}')
			return true
		}
		if expand {
			st.eachGroupRoute(write)
		}
		for j, r := range st.Routes {
			write(r, -1, j)
		}
		b = append(b, ']')
	}
	if !expand && len(st.RouteGroups) > 0 {
		b = append(b, `,"routeGroups":[`...)
		for i := range st.RouteGroups {
			g := &st.RouteGroups[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"app":`...)
			b = AppendString(b, g.App)
			b = append(b, `,"class":`...)
			b = AppendString(b, g.Class)
			b = append(b, `,"sources":`...)
			b = appendAddrs(b, g.Sources)
			b = append(b, `,"dests":`...)
			if g.Dests == nil {
				b = append(b, "null"...)
			} else {
				b = append(b, '[')
				for j := range g.Dests {
					d := &g.Dests[j]
					if j > 0 {
						b = append(b, ',')
					}
					b = append(b, `{"addr":`...)
					b = AppendAddr(b, d.Addr)
					b = append(b, `,"server":`...)
					b = AppendString(b, d.Server)
					b = append(b, '}')
				}
				b = append(b, ']')
			}
			b = append(b, `,"encrypt":`...)
			b = strconv.AppendBool(b, g.Encrypt)
			b = append(b, '}')
		}
		b = append(b, ']')
	}

	b = append(b, `,"firewall":`...)
	if st.Firewall == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range st.Firewall {
			f := &st.Firewall[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"app":`...)
			b = AppendString(b, f.App)
			b = append(b, `,"fromClass":`...)
			b = AppendString(b, f.FromClass)
			if f.ToApp != "" {
				b = append(b, `,"toApp":`...)
				b = AppendString(b, f.ToApp)
			}
			b = append(b, `,"toClass":`...)
			b = AppendString(b, f.ToClass)
			b = append(b, `,"direction":`...)
			b = AppendString(b, f.Direction)
			b = append(b, `,"sources":`...)
			b = appendAddrs(b, f.Sources)
			b = append(b, `,"dests":`...)
			b = appendAddrs(b, f.Dests)
			b = append(b, `,"protocol":`...)
			b = AppendString(b, f.Protocol)
			b = append(b, `,"ports":`...)
			if f.Ports == nil {
				b = append(b, "null"...)
			} else {
				b = append(b, '[')
				for j, p := range f.Ports {
					if j > 0 {
						b = append(b, ',')
					}
					b = strconv.AppendInt(b, int64(p), 10)
				}
				b = append(b, ']')
			}
			b = append(b, `,"encrypt":`...)
			b = strconv.AppendBool(b, f.Encrypt)
			if len(f.RemoteSources) > 0 {
				b = append(b, `,"remoteSources":`...)
				b = appendAddrs(b, f.RemoteSources)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}

	for _, f := range []struct {
		name string
		n    int
		v    any
	}{
		{`,"outbound":`, len(st.Outbound), st.Outbound},
		{`,"ingress":`, len(st.Ingress), st.Ingress},
		{`,"staged":`, len(st.Staged), st.Staged},
		{`,"hold":`, len(st.Hold), st.Hold},
	} {
		if f.n == 0 {
			continue // omitempty
		}
		b = append(b, f.name...)
		if b, err = appendMarshal(b, f.v); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// appendMarshal appends json.Marshal(v).
func appendMarshal(b []byte, v any) ([]byte, error) {
	js, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, js...), nil
}

// AppendString appends s as json.Marshal writes it. Strings with anything
// to escape (or outside ASCII) are left to json.Marshal: names, keys and
// MACs have none. The compiler's path encoder writes its strings with it.
func AppendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			js, _ := json.Marshal(s) // a string always encodes
			return append(b, js...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// closeText ends a JSON string opened at b[n] ('"') whose text a netip
// value's AppendText has just written (what json.Marshal writes for a
// TextMarshaler). Those texts never fail; one with anything to escape (an
// IPv6 zone may hold any byte) is written again by AppendString.
func closeText(b []byte, n int) []byte {
	for i := n + 1; i < len(b); i++ {
		if c := b[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			s := string(b[n+1:])
			return AppendString(b[:n], s)
		}
	}
	return append(b, '"')
}

// AppendAddr appends a as json.Marshal writes a netip.Addr (its text, ""
// for the zero Addr).
func AppendAddr(b []byte, a netip.Addr) []byte {
	n := len(b)
	b, _ = a.AppendText(append(b, '"'))
	return closeText(b, n)
}

func appendAddrPort(b []byte, a netip.AddrPort) []byte {
	n := len(b)
	b, _ = a.AppendText(append(b, '"'))
	return closeText(b, n)
}

func appendPrefix(b []byte, p netip.Prefix) []byte {
	n := len(b)
	b, _ = p.AppendText(append(b, '"'))
	return closeText(b, n)
}

// appendAddrs appends a list of addresses (null when nil, as json.Marshal).
func appendAddrs(b []byte, as []netip.Addr) []byte {
	if as == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, a := range as {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendAddr(b, a)
	}
	return append(b, ']')
}

// appendPrefixes is appendAddrs for prefixes.
func appendPrefixes(b []byte, ps []netip.Prefix) []byte {
	if ps == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, p := range ps {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendPrefix(b, p)
	}
	return append(b, ']')
}

// Same reports whether st and o are the same state by construction: equal
// scalar fields and the very same lists (one backing array and length,
// nil where the other is nil), not merely equal ones; lists equal in
// content but made apart are not the same. The compiler's states are
// read-only once made, and its cache hands an unchanged host's state out
// again as it was, so two states that are the same encode to the same
// bytes: the server encodes a host's state again only when it is not the
// same as the one it encoded last.
func (st *State) Same(o *State) bool {
	a, b := st, o
	return a.Schema == b.Schema && a.Host == b.Host && a.Address == b.Address && a.VTEPMAC == b.VTEPMAC &&
		a.WireGuardPort == b.WireGuardPort && a.KeyGeneration == b.KeyGeneration && a.Derived == b.Derived &&
		a.RotationPhase == b.RotationPhase && a.PublicKey == b.PublicKey &&
		sameList(a.Guests, b.Guests) && sameList(a.Peers, b.Peers) && sameList(a.VXLAN, b.VXLAN) &&
		sameList(a.Routes, b.Routes) && sameList(a.RouteGroups, b.RouteGroups) && sameList(a.Firewall, b.Firewall) && sameList(a.Outbound, b.Outbound) &&
		sameList(a.Ingress, b.Ingress) && sameList(a.Staged, b.Staged) && sameList(a.Hold, b.Hold)
}

// sameList reports whether x and y are one list: the same length and
// backing array, or both nil, or both empty and not nil.
func sameList[T any](x, y []T) bool {
	return len(x) == len(y) && (x == nil) == (y == nil) && (len(x) == 0 || &x[0] == &y[0])
}
