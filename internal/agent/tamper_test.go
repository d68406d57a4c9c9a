package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/agent/agenttest"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
)

// appNet is the shop app's network in the harness's states.
var appNet = netip.MustParsePrefix("100.64.0.0/24")

// signedState is state() in this build's schema: every guest names its
// app's network.
func signedState(tasks ...string) compile.HostState {
	st := state(tasks...)
	st.Schema = hoststate.Schema
	for i := range st.Guests {
		st.Guests[i].Network = appNet
	}
	return st
}

// rejected reads corridor_agent_desired_rejected_total{source,reason}.
func rejected(t *testing.T, a *agent.Agent, source, reason string) int {
	t.Helper()
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	re := regexp.MustCompile(`(?m)^corridor_agent_desired_rejected_total\{reason="` + reason + `",source="` + source + `"\} (\d+)$`)
	m := re.FindStringSubmatch(rec.Body.String())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// statusSays waits for the agent's own status to carry an error with all
// of words.
func statusSays(t *testing.T, h *harness, words ...string) string {
	t.Helper()
	var found string
	eventually(t, "a status error with "+strings.Join(words, ", "), func() bool {
		for _, e := range h.agent.Status(context.Background()).Errors {
			ok := true
			for _, w := range words {
				ok = ok && strings.Contains(e, w)
			}
			if ok {
				found = e
				return true
			}
		}
		return false
	})
	return found
}

// editDesiredFile rewrites desired.json with edit applied to its state,
// keeping revision and signature, as someone with root on the host would.
func editDesiredFile(t *testing.T, dir string, edit func(*compile.HostState)) {
	t.Helper()
	ds, ok, err := agent.LoadDesired(dir)
	if err != nil || !ok {
		t.Fatalf("load desired.json: ok %v, %v", ok, err)
	}
	edit(&ds.State)
	b, err := json.MarshalIndent(ds, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, agent.DesiredFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

const evilKey = "ZXZpbC1rZXktbm8tc2VydmVyLWtub3dzLTAwMDAwMDA=" // 32 bytes, base64

// The scenario of issue 13: the host runs its signed state; with the
// control plane down, desired.json is edited (a WireGuard peer "evil" with
// an unknown key claiming an overlay address, a task address moved out of
// its app's network) and the agent restarted. The agent refuses the file,
// applies nothing from it (the host keeps what it ran), says why and
// counts it; when the control plane comes back, its signed state of the
// same revision is applied, and the digest the agent reports is the one
// the server signed.
func TestTamperedDesiredFileWithControlPlaneDown(t *testing.T) {
	h := newHarness(t)
	good := signedState("shop/web/0")
	rev := h.cp.SetDesired(good)
	h.start()
	eventually(t, "the signed state applied", func() bool { return h.agent.AppliedRevision() == rev })
	applies := h.dp.Applies()
	h.stop()

	h.cp.SetDown(true)
	editDesiredFile(t, h.dir, func(st *compile.HostState) {
		st.Peers = append(st.Peers, compile.Peer{Server: "evil", PublicKey: evilKey,
			Endpoint: netip.MustParseAddrPort("198.18.0.66:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.99/32")}})
		st.Guests[0].Address = netip.MustParseAddr("10.99.0.10")
	})
	h.start()
	msg := statusSays(t, h, agent.DesiredFile, "refused", "bad signature")
	t.Logf("status: %s", msg)
	if n := rejected(t, h.agent, "disk", "bad_signature"); n != 1 {
		t.Errorf("corridor_agent_desired_rejected_total{source=disk,reason=bad_signature} = %d, want 1", n)
	}
	if h.dp.Applies() != applies || !h.dp.InSync(good) {
		t.Fatal("the edited state reached the data plane")
	}
	if h.agent.AppliedRevision() != 0 {
		t.Fatalf("applied revision %d with nothing applied", h.agent.AppliedRevision())
	}

	// The control plane returns: its state of the same revision applies.
	h.cp.SetDown(false)
	eventually(t, "the server's state applied again", func() bool { return h.agent.AppliedRevision() == rev })
	if !h.dp.InSync(good) {
		t.Fatal("the data plane is not in the signed state")
	}
	served := api.DesiredState{Revision: rev, State: good}
	if err := h.cp.CA.SignState(&served); err != nil {
		t.Fatal(err)
	}
	if st := h.agent.Status(context.Background()); st.AppliedDigest != served.Signature.Digest {
		t.Fatalf("applied digest %q, want the served state's %q", st.AppliedDigest, served.Signature.Digest)
	}
	back, _, err := agent.LoadDesired(h.dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := back.Verify(h.cp.CA.Cert.PublicKey); err != nil {
		t.Fatalf("desired.json after the server's answer: %v", err)
	}
}

// A stored state that fails at start, with no other state known: nothing
// is applied, the status says why, the rejection is counted.
func TestStoredStateRefusedAtStart(t *testing.T) {
	cases := []struct {
		name, reason, says string
		prepare            func(t *testing.T, h *harness)
	}{
		{"peer added", "bad_signature", "bad signature", func(t *testing.T, h *harness) {
			editDesiredFile(t, h.dir, func(st *compile.HostState) {
				st.Peers = append(st.Peers, compile.Peer{Server: "evil", PublicKey: evilKey,
					Endpoint: netip.MustParseAddrPort("198.18.0.66:51820")})
			})
		}},
		{"address changed", "bad_signature", "bad signature", func(t *testing.T, h *harness) {
			editDesiredFile(t, h.dir, func(st *compile.HostState) { st.Guests[0].Address = netip.MustParseAddr("100.64.0.77") })
		}},
		{"text edited", "bad_signature", "bad signature", func(t *testing.T, h *harness) {
			p := filepath.Join(h.dir, agent.DesiredFile)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			edited := bytes.Replace(b, []byte(`"5432`), []byte(`"22`), 1)
			edited = bytes.Replace(edited, []byte("5432"), []byte("22"), 1)
			if bytes.Equal(b, edited) {
				t.Fatal("nothing edited")
			}
			if err := os.WriteFile(p, edited, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"signature removed", "unsigned", "not signed", func(t *testing.T, h *harness) {
			ds, _, _ := agent.LoadDesired(h.dir)
			ds.Signature = nil
			if err := agent.SaveDesired(h.dir, ds); err != nil {
				t.Fatal(err)
			}
		}},
		{"signed by another CA", "bad_signature", "bad signature", func(t *testing.T, h *harness) {
			other, err := agenttest.NewCA()
			if err != nil {
				t.Fatal(err)
			}
			ds, _, _ := agent.LoadDesired(h.dir)
			ds.State.Guests = append(ds.State.Guests, ds.State.Guests[0])
			ds.State.Guests[1].Task, ds.State.Guests[1].HostIf, ds.State.Guests[1].Address = "shop/web/9", "corg9", netip.MustParseAddr("100.64.0.19")
			if err := other.SignState(&ds); err != nil {
				t.Fatal(err)
			}
			if err := agent.SaveDesired(h.dir, ds); err != nil {
				t.Fatal(err)
			}
		}},
		{"no CA to verify with", "bad_signature", "no cluster CA", func(t *testing.T, h *harness) {
			if err := os.Remove(filepath.Join(h.dir, agent.CAFile)); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			preJoin(t, h.cp, h.dir)
			saveSigned(t, h, 7, signedState("shop/web/0"))
			c.prepare(t, h)
			h.cp.SetDown(true)
			h.start()
			statusSays(t, h, agent.DesiredFile, "refused", c.says)
			if n := rejected(t, h.agent, "disk", c.reason); n != 1 {
				t.Errorf("rejected{disk,%s} = %d, want 1", c.reason, n)
			}
			if h.dp.Applies() != 0 || h.guests.Running("shop/web/0") || h.guests.Running("shop/web/9") || h.agent.AppliedRevision() != 0 {
				t.Fatal("something of the refused state was applied")
			}
		})
	}
}

// Over the wire: a state without signature, signed by another key, or
// changed after it was signed is refused and the last good one kept; a
// valid one then applies.
func TestBadSignatureOverTheWire(t *testing.T) {
	h := newHarness(t)
	h.start()
	good := signedState("shop/web/0")
	rev := h.apply(t, "the good state applied", good)
	applies := h.dp.Applies()

	other, err := agenttest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	bad := signedState("shop/web/0", "shop/web/1")
	cases := []struct {
		name, reason, says string
		sign               func(*api.DesiredState) error
	}{
		{"unsigned", "unsigned", "not signed", func(*api.DesiredState) error { return nil }},
		{"another key", "bad_signature", "bad signature", other.SignState},
		{"changed after signing", "bad_signature", "bad signature", func(ds *api.DesiredState) error {
			if err := h.cp.CA.SignState(ds); err != nil {
				return err
			}
			ds.State.Peers[0].AllowedIPs = append(ds.State.Peers[0].AllowedIPs, netip.MustParsePrefix("100.64.0.40/32"))
			return nil
		}},
	}
	for i, c := range cases {
		r := h.cp.SetEnvelope(api.DesiredState{State: bad}, c.sign)
		statusSays(t, h, "revision "+strconv.FormatInt(r, 10)+" refused", c.says)
		if n := rejected(t, h.agent, "server", c.reason); n < 1 {
			t.Errorf("%s: rejected{server,%s} = %d", c.name, c.reason, n)
		}
		if h.dp.Applies() != applies || !h.dp.InSync(good) || h.guests.Running("shop/web/1") || h.agent.AppliedRevision() != rev {
			t.Fatalf("%s: the refused state reached the host", c.name)
		}
		ds, _, err := agent.LoadDesired(h.dir)
		if err != nil || ds.Revision != rev {
			t.Fatalf("%s (%d): desired.json holds revision %d (%v), want the good %d", c.name, i, ds.Revision, err, rev)
		}
	}
	h.apply(t, "a valid state applied", bad)
	if !h.dp.InSync(bad) || !h.guests.Running("shop/web/1") {
		t.Fatal("the valid state is not in place")
	}
}

// A guest address outside its app's network is refused even when the
// control plane signed it, and so is a firewall address outside it.
func TestAddressOutsideAppNetworkRefusedWhenSigned(t *testing.T) {
	h := newHarness(t)
	h.start()
	good := signedState("shop/web/0")
	rev := h.apply(t, "the good state applied", good)

	for _, c := range []struct {
		name string
		edit func(*compile.HostState)
		says string
	}{
		{"guest outside", func(st *compile.HostState) { st.Guests[1].Address = netip.MustParseAddr("100.64.1.11") }, "guests[1].address"},
		{"network address", func(st *compile.HostState) { st.Guests[1].Address = appNet.Addr() }, "guests[1].address"},
		{"broadcast", func(st *compile.HostState) { st.Guests[1].Address = netip.MustParseAddr("100.64.0.255") }, "guests[1].address"},
		{"firewall dest outside", func(st *compile.HostState) { st.Firewall[0].Dests = []netip.Addr{netip.MustParseAddr("100.65.0.20")} }, "firewall[0].dests[0]"},
	} {
		bad := signedState("shop/web/0", "shop/web/1")
		c.edit(&bad)
		r := h.cp.SetDesired(bad) // correctly signed
		statusSays(t, h, "revision "+strconv.FormatInt(r, 10)+" refused", c.says)
		if h.guests.Running("shop/web/1") || h.agent.AppliedRevision() != rev || !h.dp.InSync(good) {
			t.Fatalf("%s: the state reached the host", c.name)
		}
	}
	if n := rejected(t, h.agent, "server", "invalid"); n != 4 {
		t.Errorf("rejected{server,invalid} = %d, want 4", n)
	}
}
