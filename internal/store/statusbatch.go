package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// statusBatch coalesces the status writes of many agents into few etcd
// transactions. Every agent reports once it has applied a change: a
// change that touches 10,000 hosts brings 10,000 reports within seconds,
// and one Put each (one gRPC call, one raft proposal, one apply) was the
// largest part of the server's CPU per host. A write waits for nothing
// when none is under way: it goes alone, and the writes that come in
// while it is in flight go together in the next transaction (group
// commit), up to maxOpsPerTxn each.
type statusBatch struct {
	mu      sync.Mutex
	queue   []*statusWrite
	running bool
}

type statusWrite struct {
	key, value string
	done       chan error // buffered: the writer never blocks on it
}

// statusTimeout bounds one batch's transaction; each caller still waits
// only as long as its own context allows.
const statusTimeout = 30 * time.Second

// putStatusBatched queues one status write and waits for its transaction.
func (s *Store) putStatusBatched(ctx context.Context, key, value string) error {
	w := &statusWrite{key: key, value: value, done: make(chan error, 1)}
	b := &s.statuses
	b.mu.Lock()
	b.queue = append(b.queue, w)
	if !b.running {
		b.running = true
		go s.writeStatuses()
	}
	b.mu.Unlock()
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writeStatuses commits the queued writes, a transaction at a time, until
// the queue is empty.
func (s *Store) writeStatuses() {
	b := &s.statuses
	for {
		b.mu.Lock()
		n := min(len(b.queue), maxOpsPerTxn)
		if n == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		batch := b.queue[:n:n]
		b.queue = b.queue[n:]
		if len(b.queue) == 0 {
			b.queue = nil // let the backing array go
		}
		b.mu.Unlock()
		err := s.commitStatuses(batch)
		for _, w := range batch {
			w.done <- err
		}
	}
}

// commitStatuses writes one batch in one transaction. etcd refuses a
// transaction that puts one key twice: of two reports of one host in a
// batch, the later one (queue order) is written.
func (s *Store) commitStatuses(batch []*statusWrite) error {
	last := make(map[string]int, len(batch))
	for i, w := range batch {
		last[w.key] = i
	}
	ops := make([]clientv3.Op, 0, len(last))
	for i, w := range batch {
		if last[w.key] == i {
			ops = append(ops, clientv3.OpPut(w.key, w.value))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	if _, err := s.client.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("store: write %d statuses: %w", len(ops), err)
	}
	return nil
}
