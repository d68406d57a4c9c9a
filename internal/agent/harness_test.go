package agent_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"log/slog"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/agent/agenttest"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/spec"
)

const (
	host  = "s1"
	token = "join-secret"
)

// harness is one agent wired to the fakes.
type harness struct {
	t      *testing.T
	dir    string
	cp     *agenttest.ControlPlane
	ev     *agenttest.Events
	guests *agenttest.Guests
	dp     *agenttest.Dataplane
	cfg    agent.Config
	agent  *agent.Agent
	cancel context.CancelFunc
	done   chan error
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	cp, err := agenttest.NewControlPlane(token)
	if err != nil {
		t.Fatal(err)
	}
	ev := &agenttest.Events{}
	dp := agenttest.NewDataplane(ev)
	guests := agenttest.NewGuests(ev)
	guests.Dataplane = dp
	h := &harness{t: t, dir: t.TempDir(), cp: cp, ev: ev, guests: guests, dp: dp}
	h.cfg = agent.Config{
		Name:          host,
		StateDir:      h.dir,
		Address:       netip.MustParseAddr("198.18.0.1"),
		UnderlayIface: "eth0",
		Capacity:      spec.Resources{CPU: 4000, Memory: 8 << 30},
		Labels:        map[string]string{"zone": "a"},
		JoinToken:     token,
		Bootstrap:     cp.Bootstrap(),
		Connect: func(id *agent.Identity) (agent.ControlPlane, error) {
			c, err := cp.Connect(id.CertPEM)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		Guests:         guests,
		Dataplane:      dp,
		PollWait:       100 * time.Millisecond,
		RepairInterval: time.Hour,
		StatusInterval: time.Hour,
		BackoffMin:     5 * time.Millisecond,
		BackoffMax:     40 * time.Millisecond,
		Logger:         slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	return h
}

// start runs the agent until the test ends or stop is called.
func (h *harness) start() {
	h.t.Helper()
	a, err := agent.New(h.cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan error, 1)
	go func() { h.done <- a.Run(ctx) }()
	h.t.Cleanup(h.stop)
}

// stop stops the agent and returns what Run returned.
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		h.t.Error("Run did not return within 5s of cancel")
	}
}

// eventually waits up to 5s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// state is a small realistic host state: guests of the shop app, one
// encrypted peer, one VXLAN entry, routes and firewall rules.
func state(tasks ...string) compile.HostState {
	st := compile.HostState{
		Host:          host,
		Address:       netip.MustParseAddr("198.18.0.1"),
		VTEPMAC:       "02:c0:00:00:00:01",
		WireGuardPort: 51820,
	}
	var srcs []netip.Addr
	for i, t := range tasks {
		addr := netip.AddrFrom4([4]byte{100, 64, 0, byte(10 + i)})
		srcs = append(srcs, addr)
		st.Guests = append(st.Guests, compile.Guest{
			Task: t, App: "shop", Class: "web", Index: i, Address: addr,
			HostIf: "corg" + t[len(t)-1:],
			Spec:   spec.Guest{Runtime: spec.RuntimeNetns, Command: []string{"sleep", "infinity"}},
			Env:    map[string]string{"CORRIDOR_TASK": t},
		})
	}
	db := netip.MustParseAddr("100.64.0.20")
	cache := netip.MustParseAddr("100.64.0.30")
	st.Peers = []compile.Peer{{
		Server: "s2", PublicKey: "cGVlci1rZXktb2YtczItMDAwMDAwMDAwMDAwMDAwMDA=",
		Endpoint:   netip.MustParseAddrPort("198.18.0.2:51820"),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(db, 32)},
	}}
	st.VXLAN = []compile.VXLANEntry{{Server: "s3", Underlay: netip.MustParseAddr("198.18.0.3"), MAC: "02:c0:00:00:00:03", Guests: []netip.Addr{cache}}}
	st.Routes = []compile.Route{
		{Sources: srcs, Dest: db, Server: "s2", Encrypt: true},
		{Sources: srcs, Dest: cache, Server: "s3", Encrypt: false},
	}
	st.Firewall = []compile.FirewallRule{{
		App: "shop", FromClass: "web", ToClass: "db", Direction: compile.Egress,
		Sources: srcs, Dests: []netip.Addr{db}, Protocol: "tcp", Ports: []int{5432}, Encrypt: true,
	}}
	return st
}

// saveSigned stores st at rev in desired.json, signed by the control
// plane's CA, as the agent keeps what it received.
func saveSigned(t *testing.T, h *harness, rev int64, st compile.HostState) api.DesiredState {
	t.Helper()
	ds := api.DesiredState{Revision: rev, State: st}
	if err := h.cp.CA.SignState(&ds); err != nil {
		t.Fatal(err)
	}
	if err := agent.SaveDesired(h.dir, ds); err != nil {
		t.Fatal(err)
	}
	return ds
}

// preJoin stores an identity for host in dir, as an earlier run would have.
func preJoin(t *testing.T, cp *agenttest.ControlPlane, dir string) {
	t.Helper()
	key, cert, err := cp.CA.Issue(host)
	if err != nil {
		t.Fatal(err)
	}
	id, err := agent.ParseIdentity(key, cert, cp.CA.CertPEM, host, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Save(dir); err != nil {
		t.Fatal(err)
	}
}

// apply gives the agent st through the control plane, waits (as
// eventually, saying what) until the agent has applied it, and returns its
// revision.
func (h *harness) apply(t *testing.T, what string, st compile.HostState) int64 {
	t.Helper()
	r := h.cp.SetDesired(st)
	eventually(t, what, func() bool { return h.agent.AppliedRevision() == r })
	return r
}
