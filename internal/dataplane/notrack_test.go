package dataplane

import (
	"strings"
	"testing"
)

// TestRulesetUnderlayLegs: the notrack rules name exactly the peers'
// underlay addresses with this host's tunnel ports, and the input chain
// takes WireGuard's ports from the peers only.
func TestRulesetUnderlayLegs(t *testing.T) {
	st := validState(t) // peer b at 198.18.0.2:51820, VTEP b at 198.18.0.2
	d, err := buildDesired(st)
	if err != nil {
		t.Fatal(err)
	}
	text := buildRuleset(d, "corw0").text()
	for _, want := range []string{
		"raw_prerouting: meta nfproto ipv4 meta l4proto udp ip saddr . udp dport {198.18.0.2 . 4789, 198.18.0.2 . 51820, 198.18.0.2 . 51821} notrack",
		"raw_output: meta nfproto ipv4 meta l4proto udp ip daddr . udp sport {198.18.0.2 . 51820, 198.18.0.2 . 51821} notrack",
		"raw_output: meta nfproto ipv4 meta l4proto udp ip daddr . udp dport {198.18.0.2 . 4789} notrack",
		`input: meta nfproto ipv4 meta l4proto udp udp dport {51820,51821} ip saddr != {198.18.0.2} counter name "tunnel-peer" drop`,
		`input: meta nfproto ipv6 meta l4proto udp udp dport {51820,51821} counter name "tunnel-peer" drop`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, text)
		}
	}
	// No peers, no VXLAN entries: nothing untracked, WireGuard's ports
	// closed.
	st.Peers, st.VXLAN, st.Routes = nil, nil, nil
	st.Firewall[0].Encrypt = false
	d, err = buildDesired(st)
	if err != nil {
		t.Fatal(err)
	}
	text = buildRuleset(d, "corw0").text()
	if strings.Contains(text, "notrack") {
		t.Errorf("a host without peers untracks something:\n%s", text)
	}
	if !strings.Contains(text, `input: meta nfproto ipv4 meta l4proto udp udp dport {51820,51821} counter name "tunnel-peer" drop`) {
		t.Errorf("a host without peers leaves WireGuard's ports open:\n%s", text)
	}
}
