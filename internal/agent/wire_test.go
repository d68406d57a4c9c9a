package agent

import (
	"reflect"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/dataplane"
)

func TestConvertDataplaneStatus(t *testing.T) {
	hs := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	got := convertDataplaneStatus(dataplane.Status{
		Mode: "kernel",
		Peers: []dataplane.PeerStatus{
			{PublicKey: "k2", Server: "s2", LastHandshake: hs, RxBytes: 10, TxBytes: 20, Device: "corw0+", Spare: true, Routed: true},
			{PublicKey: "kx"},
		},
		Drops: []dataplane.DropCounter{
			{Kind: dataplane.DropPair, App: "shop", FromClass: "web", ToClass: "db", Packets: 3},
			{Kind: dataplane.DropEgress, App: "shop", FromClass: "web", Packets: 1 << 63},
			{Kind: "spoof", Packets: 2},
		},
	})
	want := DataplaneStatus{
		WireGuardMode: "kernel",
		Peers:         []api.PeerStatus{{Server: "s2", PublicKey: "k2", LastHandshake: hs, RxBytes: 10, TxBytes: 20, Spare: true, Routed: true}, {Server: "unknown:kx", PublicKey: "kx"}},
		Drops: []api.DropCount{
			{Kind: "pair", App: "shop", FromClass: "web", ToClass: "db", Packets: 3},
			{Kind: "out", App: "shop", FromClass: "web", Packets: 1<<63 - 1},
			{Kind: "spoof", Packets: 2},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}
