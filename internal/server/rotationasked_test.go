package server

import (
	"testing"

	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
)

// TestRotationAsked: the controller skips a rotation step (and its read
// of every server and host from etcd) only when no server has a rotation
// recorded and none asks a key generation above the one its agent
// reported; revoked servers do not count.
func TestRotationAsked(t *testing.T) {
	srv := func(name string, gen int64, rot *spec.KeyRotation, revoked bool) store.ServerRecord {
		return store.ServerRecord{Server: spec.Server{Name: name, KeyGeneration: gen, Rotation: rot}, Revoked: revoked}
	}
	prepare := &spec.KeyRotation{Generation: 2, Phase: spec.RotationPrepare}
	for _, tc := range []struct {
		name     string
		servers  []store.ServerRecord
		reported map[string]int64
		want     bool
	}{
		{"none asked", []store.ServerRecord{srv("a", 0, nil, false), srv("b", 3, nil, false)}, map[string]int64{"b": 3}, false},
		{"no servers", nil, nil, false},
		{"generation above the reported one", []store.ServerRecord{srv("a", 0, nil, false), srv("b", 4, nil, false)}, map[string]int64{"b": 3}, true},
		{"asked before the first report", []store.ServerRecord{srv("a", 1, nil, false)}, nil, true},
		{"rotation recorded", []store.ServerRecord{srv("a", 2, prepare, false)}, map[string]int64{"a": 2}, true},
		{"revoked server left out", []store.ServerRecord{srv("a", 5, prepare, true)}, nil, false},
	} {
		if got := rotationAsked(&store.Snapshot{Servers: tc.servers}, tc.reported); got != tc.want {
			t.Errorf("%s: rotationAsked = %v, want %v", tc.name, got, tc.want)
		}
	}
}
