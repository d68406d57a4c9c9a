package dataplane

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestStalledHandshakeRetried puts both hosts of an encrypted path in the
// state crossed initiations leave them in: each sent its initiation and got
// no valid answer, so WireGuard would wait its 5 s REKEY_TIMEOUT before
// trying again. RetryStalledHandshakes must get the handshake done well
// before that, from the host whose key sorts lower only.
func TestStalledHandshakeRetried(t *testing.T) {
	s := newScenario(t)
	// Both initiations are lost: WireGuard's port is dropped on arrival at
	// both hosts while they add each other.
	for _, h := range []*host{s.a, s.b} {
		dropWireGuard(t, h, true)
	}
	s.apply(t)
	sent := time.Now()
	time.Sleep(200 * time.Millisecond) // the initiations are sent and dropped
	for _, h := range []*host{s.a, s.b} {
		dropWireGuard(t, h, false)
	}

	// Without a retry nothing happens for a while: the stall is real.
	time.Sleep(HandshakeStallAfter)
	if hs := lastHandshakes(t, s.a, s.b); hs != [2]bool{} {
		t.Fatalf("a handshake happened though both initiations were dropped: %v", hs)
	}

	lower, higher := s.a, s.b
	if ka, kb := s.a.dp.PublicKey(), s.b.dp.PublicKey(); bytes.Compare(ka[:], kb[:]) > 0 {
		lower, higher = s.b, s.a
	}
	var retriedLower, retriedHigher []string
	for time.Since(sent) < 4*time.Second {
		r, err := lower.dp.RetryStalledHandshakes(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		retriedLower = append(retriedLower, r.Retried...)
		r, err = higher.dp.RetryStalledHandshakes(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		retriedHigher = append(retriedHigher, r.Retried...)
		if lastHandshakes(t, s.a, s.b) == [2]bool{true, true} {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(sent)
	if hs := lastHandshakes(t, s.a, s.b); hs != [2]bool{true, true} {
		t.Fatalf("no handshake %s after the initiations (WireGuard alone retries after 5 s): %v; retried by the lower key %v, by the higher %v",
			took.Round(time.Millisecond), hs, retriedLower, retriedHigher)
	}
	if len(retriedLower) != 1 || len(retriedHigher) != 0 {
		t.Errorf("retries: lower key %v, higher key %v; want one retry, by the lower key only", retriedLower, retriedHigher)
	}
	t.Logf("handshake %s after the lost initiations; retried %v", took.Round(time.Millisecond), retriedLower)

	// The re-added peer is the same peer: the encrypted path works.
	s.mustConnect(t, s.a1, s.b1, portDB, true)
	// Each host tells once that its peer came up; then the check reads
	// nothing.
	for _, h := range []*host{s.a, s.b} {
		r, err := h.dp.RetryStalledHandshakes(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		other := "a"
		if h == s.a {
			other = "b"
		}
		if strings.Join(r.Completed, ",") != other {
			t.Errorf("%s: completed handshakes %v, want [%s]", h.name, r.Completed, other)
		}
		if h.dp.watchHandshakes {
			t.Errorf("%s still watches handshakes after every peer has one", h.name)
		}
	}
}

// dropWireGuard drops (or stops dropping) WireGuard's UDP port on arrival
// at h, in a table of the test's own.
func dropWireGuard(t *testing.T, h *host, drop bool) {
	t.Helper()
	script := "delete table inet cortest\n"
	if drop {
		script = "table inet cortest {\n chain in { type filter hook input priority -300; udp dport 51820 drop; }\n}\n"
	}
	cmd := exec.Command("ip", "netns", "exec", h.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", h.name, err, out)
	}
}

// lastHandshakes tells whether each host's only peer has had a handshake.
func lastHandshakes(t *testing.T, hs ...*host) [2]bool {
	t.Helper()
	var out [2]bool
	for i, h := range hs {
		dev, err := h.dp.wg.Device(h.wgName)
		if err != nil {
			t.Fatal(err)
		}
		if len(dev.Peers) != 1 {
			t.Fatalf("%s has %d peers, want 1", h.name, len(dev.Peers))
		}
		out[i] = !dev.Peers[0].LastHandshakeTime.IsZero()
	}
	return out
}
