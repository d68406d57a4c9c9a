package store

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// keyMove holds the make-before-break move under way, if any.
const keyMove = "move"

// Phases of a make-before-break move (docs/architecture.md, "Moving a
// task: make before break").
const (
	MoveStage  = "stage"  // the new hosts run staged copies, unrouted
	MoveHold   = "hold"   // every host holds new connections to the tasks and lets open ones end
	MoveRoute  = "route"  // the new hosts route the tasks to their copies; every other host still holds
	MoveSwitch = "switch" // every host but the old ones routes the tasks to their new copies
)

// MoveRecord is the move under way: tasks leaving draining servers that
// run on their old server until their new copy is started and every host
// routes to it. The controller keeps it here so that a new leader resumes
// the move where the old one left it.
type MoveRecord struct {
	Phase   string     `json:"phase"`
	Started time.Time  `json:"started"`
	Since   time.Time  `json:"since"` // when Phase began
	Tasks   []MoveTask `json:"tasks"`
}

// MoveTask is one task of a move.
type MoveTask struct {
	Task    string     `json:"task"`
	From    string     `json:"from"`
	To      string     `json:"to"`
	Address netip.Addr `json:"address"`
}

// GetMove reads the move under way; nil when there is none.
func (s *Store) GetMove(ctx context.Context) (*MoveRecord, error) {
	resp, err := s.client.Get(ctx, s.key(keyMove))
	if err != nil {
		return nil, fmt.Errorf("store: read the move under way: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var m MoveRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		return nil, fmt.Errorf("store: decode the move under way: %w", err)
	}
	return &m, nil
}

// PutMove writes the move under way, or deletes it when m is nil, guarded
// like WriteDesired.
func (s *Store) PutMove(ctx context.Context, guard []clientv3.Cmp, m *MoveRecord) error {
	op := clientv3.OpDelete(s.key(keyMove))
	if m != nil {
		b, err := json.Marshal(m)
		if err != nil {
			return fmt.Errorf("store: encode the move: %w", err)
		}
		op = clientv3.OpPut(s.key(keyMove), string(b))
	}
	resp, err := s.client.Txn(ctx).If(guard...).Then(op).Commit()
	if err != nil {
		return fmt.Errorf("store: write the move: %w", err)
	}
	if !resp.Succeeded {
		return ErrConflict
	}
	s.noteWrite(resp.Header.Revision)
	return nil
}
