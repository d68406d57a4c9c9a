package agent

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/corridor-dev/corridor/internal/api"
)

// During a key rotation a peer is listed on both WireGuard devices: the
// scrape still succeeds, with one series per peer server, taken from the
// device its routes take.
func TestPathMetricsDuringRotation(t *testing.T) {
	c := &pathCollector{}
	hs := time.Now().Add(-time.Second)
	c.set([]api.PeerStatus{
		{Server: "s2", PublicKey: "old", RxBytes: 1, LastHandshake: hs},
		{Server: "s2", PublicKey: "next", RxBytes: 7, LastHandshake: hs, Spare: true, Routed: true},
		{Server: "s3", PublicKey: "k3", RxBytes: 3, LastHandshake: hs, Routed: true},
	}, nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("scrape during a rotation: %v", err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "corridor_agent_peer_received_bytes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	if got["s2"] != 7 || got["s3"] != 3 || len(got) != 2 {
		t.Fatalf("rx bytes per server %v; want s2 from its routed (second) device, 7, and s3, 3", got)
	}
}
