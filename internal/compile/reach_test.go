package compile

import (
	"bytes"
	"encoding/base64"
	"net/netip"
	"testing"

	"github.com/corridor-dev/corridor/internal/hoststate"
)

// TestRemoteListsShared checks the remote lists that hosts share
// (reach.go): hosts of one app with the same classes reached hold the
// very same allowed IPs and VXLAN guests of a server (a positive control),
// every such list is full (len == cap), so that a reader that appends to
// one host's list gets a copy and cannot write into another host's, and
// neither the readers of host states (validation, encoders, expansion) nor
// an append to one host's lists change any other host's: the plan stays
// byte for byte a fresh compile's.
func TestRemoteListsShared(t *testing.T) {
	servers, apps, div := 60, 8, 10
	if raceDetector {
		servers, apps, div = 24, 4, 20
	}
	in := sizedFleet(servers, apps, div)
	for i := range in.Servers { // keys that validate
		var k [32]byte
		k[0], k[1] = byte(i), byte(i>>8)
		in.Servers[i].PublicKey = base64.StdEncoding.EncodeToString(k[:])
	}
	p, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	enc := map[*netip.Prefix]string{}
	plain := map[*netip.Addr]string{}
	sharedEnc, sharedPlain := 0, 0
	for _, h := range p.Hosts {
		for _, pe := range h.Peers {
			if len(pe.AllowedIPs) != cap(pe.AllowedIPs) {
				t.Fatalf("host %s: peer %s's allowed IPs have room to grow (%d of %d)", h.Host, pe.Server, len(pe.AllowedIPs), cap(pe.AllowedIPs))
			}
			if o, ok := enc[&pe.AllowedIPs[0]]; ok && o != h.Host {
				sharedEnc++
			}
			enc[&pe.AllowedIPs[0]] = h.Host
		}
		for _, v := range h.VXLAN {
			if len(v.Guests) != cap(v.Guests) {
				t.Fatalf("host %s: VXLAN entry %s's guests have room to grow (%d of %d)", h.Host, v.Server, len(v.Guests), cap(v.Guests))
			}
			if o, ok := plain[&v.Guests[0]]; ok && o != h.Host {
				sharedPlain++
			}
			plain[&v.Guests[0]] = h.Host
		}
	}
	if sharedEnc == 0 || sharedPlain == 0 {
		t.Fatalf("no list shared between hosts (%d allowed IPs, %d VXLAN guests): the test guards nothing", sharedEnc, sharedPlain)
	}
	// The readers of host states, on every host.
	for i := range p.Hosts {
		h := &p.Hosts[i]
		if err := hoststate.Validate(*h, hoststate.Options{Host: h.Host}); err != nil {
			t.Fatalf("host %s: %v", h.Host, err)
		}
		for _, schema := range []string{"", "1.3", "1.5"} {
			if _, err := h.EncodeFor(schema); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := h.Encode(); err != nil {
			t.Fatal(err)
		}
		_ = h.Expanded()
		_ = h.AllRoutes()
	}
	// A reader that appends to one host's lists, as an ingress or a link
	// does (they copy first, but a careless one might not).
	h := &p.Hosts[1]
	extraP := netip.MustParsePrefix("100.127.255.254/32")
	extraA := extraP.Addr()
	for j := range h.Peers {
		_ = append(h.Peers[j].AllowedIPs, extraP)
	}
	for j := range h.VXLAN {
		_ = append(h.VXLAN[j].Guests, extraA)
	}
	fresh, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := mustJSON(t, p), mustJSON(t, fresh); !bytes.Equal(g, w) {
		t.Fatalf("the plan changed under its readers: %s", firstDiff(g, w))
	}
}
