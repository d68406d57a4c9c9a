package spec

import (
	"net/netip"
	"strings"
	"testing"
)

const egressApp = baseApp + `egress:
  - from: web
    to: [203.0.113.7, 198.51.100.0/24]
    ports: [443]
  - from: db
    to: [203.0.113.9]
    ports: [53]
    protocol: udp
resolvers: [203.0.113.53]
`

// baseApp has 43 lines: "egress:" is line 44, its first entry line 45.
func TestEgressDecodes(t *testing.T) {
	apps, err := DecodeApps("shop.yaml", []byte(egressApp))
	if err != nil {
		t.Fatal(err)
	}
	eg := apps[0].Egress
	if len(eg) != 2 || eg[0].Protocol != ProtoTCP || eg[1].Protocol != ProtoUDP {
		t.Fatalf("egress %+v", eg)
	}
	want := []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32"), netip.MustParsePrefix("198.51.100.0/24")}
	got := eg[0].EgressDests()
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("dests %v, want %v", got, want)
	}
	if apps[0].Resolvers[0] != "203.0.113.53" {
		t.Fatalf("resolvers %v", apps[0].Resolvers)
	}
}

func TestEgressErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown field", "egress:\n  - from: web\n    too: [203.0.113.7]\n    ports: [443]\n",
			`shop.yaml:46:5: egress[0].too: unknown field "too": did you mean "to"?`},
		{"no class", "egress:\n  - from: nope\n    to: [203.0.113.7]\n    ports: [443]\n",
			`shop.yaml:45:5: egress[0].from: class "nope" is not defined in this app`},
		{"overlay pool", "egress:\n  - from: web\n    to: [100.64.3.4]\n    ports: [443]\n",
			`shop.yaml:46:10: egress[0].to[0]: destination 100.64.3.4/32 overlaps the overlay pool 100.64.0.0/10`},
		{"everything", "egress:\n  - from: web\n    to: [0.0.0.0/0]\n    ports: [443]\n",
			`shop.yaml:46:10: egress[0].to[0]: destination 0.0.0.0/0 overlaps`},
		{"host bits", "egress:\n  - from: web\n    to: [203.0.113.7/24]\n    ports: [443]\n",
			`shop.yaml:46:10: egress[0].to[0]: 203.0.113.7/24 has host bits set: did you mean 203.0.113.0/24?`},
		{"ipv6", "egress:\n  - from: web\n    to: [2001:db8::1]\n    ports: [443]\n",
			`egress[0].to[0]: "2001:db8::1" is not IPv4`},
		{"no ports", "egress:\n  - from: web\n    to: [203.0.113.7]\n",
			`egress[0].ports: at least one port is required`},
		{"gateway", "resolvers: [169.254.1.1]\n",
			`shop.yaml:44:13: resolvers[0]: resolver 169.254.1.1 overlaps link-local`},
		{"protocol", "egress:\n  - from: web\n    to: [203.0.113.7]\n    ports: [443]\n    protocol: icmp\n",
			`egress[0].protocol: protocol must be tcp or udp`},
		{"own network", "network: 10.9.0.0/16\negress:\n  - from: web\n    to: [10.9.1.0/24]\n    ports: [443]\n",
			`egress[0].to[0]: destination 10.9.1.0/24 overlaps the overlay network 10.9.0.0/16`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeApps("shop.yaml", []byte(baseApp+tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestEgressOverlapsOtherApp(t *testing.T) {
	other := strings.Replace(baseApp, "name: shop", "name: crm\nnetwork: 10.20.0.0/16", 1)
	src := baseApp + "egress:\n  - from: web\n    to: [10.20.5.5]\n    ports: [443]\n---\n" + other
	_, err := DecodeApps("two.yaml", []byte(src))
	if err == nil || !strings.Contains(err.Error(), `two.yaml:46:10: egress[0].to[0]: destination 10.20.5.5/32 overlaps network 10.20.0.0/16 of app "crm"`) {
		t.Fatalf("error %v", err)
	}
}

func TestOutsideConflictUnderlay(t *testing.T) {
	p := netip.MustParsePrefix("198.18.0.0/24")
	if why := OutsideConflict(p, nil, []netip.Addr{netip.MustParseAddr("198.18.0.2")}); !strings.Contains(why, "underlay address 198.18.0.2") {
		t.Fatalf("why %q", why)
	}
	if why := OutsideConflict(netip.MustParsePrefix("198.18.0.250/32"), nil, []netip.Addr{netip.MustParseAddr("198.18.0.2")}); why != "" {
		t.Fatalf("a non-server address on the underlay refused: %q", why)
	}
}
