package store

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/corridor-dev/corridor/internal/api"
)

// TestStatusesGroupCommit: status reports that arrive while a write is in
// flight go to etcd together, at most maxOpsPerTxn to a transaction (250
// queued reports: 3 revisions, not 250), each caller returns once its own
// report is stored, and of two reports of one host in a batch the later
// one is what etcd keeps.
func TestStatusesGroupCommit(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	const n = 250
	// Hold the writer back, as a transaction in flight does, until all n
	// reports are queued.
	s.statuses.mu.Lock()
	s.statuses.running = true
	s.statuses.mu.Unlock()
	before, err := s.client.Get(bg, "anything")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n+1)
	put := func(host string, gen int64) {
		defer wg.Done()
		errs <- s.PutStatus(bg, StatusRecord{Status: api.Status{Name: host, AppliedRevision: gen}, Received: time.Now()})
	}
	for i := range n - 1 {
		wg.Add(1)
		go put(fmt.Sprintf("h%03d", i), 1)
	}
	queued := func(k int) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			s.statuses.mu.Lock()
			q := len(s.statuses.queue)
			s.statuses.mu.Unlock()
			if q >= k {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d of %d reports queued", q, k)
			}
			time.Sleep(time.Millisecond)
		}
	}
	queued(n - 1)
	// A second report of h000, queued after its first: it must win.
	wg.Add(1)
	go put("h000", 2)
	queued(n)
	go s.writeStatuses()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	resp, err := s.client.Get(bg, s.dir(dirHosts), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != n-1 {
		t.Fatalf("%d status keys stored, want %d", len(resp.Kvs), n-1)
	}
	if revs := resp.Header.Revision - before.Header.Revision; revs != 3 {
		t.Errorf("%d reports took %d etcd revisions, want 3 transactions of at most %d", n, revs, maxOpsPerTxn)
	}
	hosts, err := s.Hosts(bg)
	if err != nil {
		t.Fatal(err)
	}
	if got := hosts["h000"].Status.Status.AppliedRevision; got != 2 {
		t.Errorf("h000's stored report has applied revision %d, want the later report's 2", got)
	}
	// Idle again: a lone report goes at once, in a transaction of its own.
	if err := s.PutStatus(bg, StatusRecord{Status: api.Status{Name: "h001", AppliedRevision: 3}}); err != nil {
		t.Fatal(err)
	}
}

// TestStatusBatchFailureAnswersEveryReport: when a group commit's
// transaction fails (here: one report of the batch is larger than etcd
// takes in a request), every report of that batch is answered with the
// error and none is stored, so that no agent counts a lost report as
// delivered; the next report goes through.
func TestStatusBatchFailureAnswersEveryReport(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	const n = 20
	s.statuses.mu.Lock()
	s.statuses.running = true // hold the writer until all are queued
	s.statuses.mu.Unlock()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("h%03d", i)
			value := fmt.Sprintf(`{"status":{"name":%q,"appliedRevision":1}}`, name)
			if i == n/2 {
				// Queued as it is: encoding 17 MiB under -race on a
				// loaded machine took longer than the queueing bound.
				value = `{"status":{"name":"` + name + `","errors":["` + strings.Repeat("x", 17<<20) + `"]}}`
			}
			errs <- s.putStatusBatched(bg, s.hostKey(name, suffixStatus), value)
		}()
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		s.statuses.mu.Lock()
		q := len(s.statuses.queue)
		s.statuses.mu.Unlock()
		if q == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d reports queued", q, n)
		}
		time.Sleep(time.Millisecond)
	}
	go s.writeStatuses()
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
		}
	}
	if failed != n {
		t.Fatalf("%d of %d reports of a failed batch were answered with an error, want all", failed, n)
	}
	resp, err := s.client.Get(bg, s.dir(dirHosts), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Fatalf("%d statuses stored from a failed batch", resp.Count)
	}
	if err := s.PutStatus(bg, StatusRecord{Status: api.Status{Name: "h000", AppliedRevision: 2}, Received: time.Now()}); err != nil {
		t.Fatalf("a report after the failed batch: %v", err)
	}
	if st, err := s.StatusOf(bg, "h000"); err != nil || st == nil || st.Status.AppliedRevision != 2 {
		t.Fatalf("StatusOf(h000) = %+v, %v; want revision 2", st, err)
	}
}
