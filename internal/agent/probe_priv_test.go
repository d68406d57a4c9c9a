package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/probe"
)

// TestProbeWithRealTraffic runs the real prober between two namespaces of
// this test: a "guest" and a "host" joined by a veth pair, the capture on
// the host end. A plain connection shows the marker there.
func TestProbeWithRealTraffic(t *testing.T) {
	gh, gpath := testNetns(t, "pg")
	hh, hpath := testNetns(t, "ph")
	if err := gh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "corpg"}, PeerName: "corph"}); err != nil {
		t.Fatal(err)
	}
	peer, err := gh.LinkByName("corph")
	if err != nil {
		t.Fatal(err)
	}
	hns, err := netns.GetFromPath(hpath)
	if err != nil {
		t.Fatal(err)
	}
	defer hns.Close()
	if err := gh.LinkSetNsFd(peer, int(hns)); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		h    *netlink.Handle
		name string
		cidr string
	}{{gh, "corpg", "100.64.9.1/24"}, {hh, "corph", "100.64.9.2/24"}} {
		l, err := x.h.LinkByName(x.name)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(x.cidr)
		if err := x.h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := x.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		lo, _ := x.h.LinkByName("lo")
		x.h.LinkSetUp(lo) //nolint:errcheck
	}
	ctx := context.Background()
	ln, err := probe.Listen(ctx, hpath, "tcp", "100.64.9.2:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	p := &agent.Prober{GuestNetns: func(string) string { return gpath }, HostNetns: hpath}
	req := api.ProbeRequest{FromTask: "t/web/0", ToAddr: "100.64.9.2", Network: "tcp", Port: 7000,
		Marker: []byte("corridor-agent-test-marker"), CaptureIface: "corph", Timeout: 2 * time.Second}
	res, err := p.Probe(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Connected || !res.MarkerSeen || res.Error != "" || res.RTT <= 0 {
		t.Fatalf("plain probe: %+v", res)
	}
	if !ln.Received(req.Marker) {
		t.Error("the listener did not receive the marker")
	}

	req.Port = 7001
	if res, err = p.Probe(ctx, req); err != nil || !res.Refused || res.Connected || res.MarkerSeen {
		t.Fatalf("closed port: %+v %v", res, err)
	}

	// Nobody holds 100.64.9.99: no ARP answer, nothing comes back.
	req.ToAddr, req.Port, req.Timeout = "100.64.9.99", 7000, 300*time.Millisecond
	if res, err = p.Probe(ctx, req); err != nil || res.Connected || res.Refused || res.MarkerSeen {
		t.Fatalf("dead address: %+v %v", res, err)
	}
}
