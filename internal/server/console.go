package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/console"
	"github.com/corridor-dev/corridor/internal/store"
	"github.com/corridor-dev/corridor/internal/verify"
)

// mountConsole adds the web console's routes (internal/console) to mux,
// each instrumented under its own pattern. The console authenticates by
// itself (its session cookie); the /v1 routes never accept that cookie.
func (s *Server) mountConsole(mux *http.ServeMux) {
	c, err := console.New(console.Config{
		Source: consoleSource{s},
		Token:  func() string { return s.adminToken },
		Logger: s.log,
	})
	if err != nil {
		// Only a build without the embedded assets gets here.
		s.log.Error("web console disabled", "err", err)
		return
	}
	for pattern, fn := range c.Routes() {
		mux.Handle(pattern, s.instrument(pattern, fn))
	}
}

// consoleSource gives the console the server's views, read the way the
// /v1 handlers read them, and the store revision to wait on.
type consoleSource struct{ s *Server }

// consoleEvents is how many recent events the console shows.
const consoleEvents = 100

func (c consoleSource) State(ctx context.Context) (*console.State, error) {
	s := c.s
	// The revision first: a change made while the state is read moves the
	// revision past it, so the next Wait returns at once.
	rev := s.revs.current()
	sn, err := s.st.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	statuses, err := s.st.Statuses(ctx)
	if err != nil {
		return nil, err
	}
	evs, err := s.st.Events(ctx, consoleEvents)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	st := &console.State{
		Revision: max(rev, sn.Revision), Now: now.UTC(),
		Apps:   make([]api.App, 0, len(sn.Apps)),
		Tasks:  taskInfos(sn, statuses, "", "", ""),
		Paths:  pathInfos(sn, statuses, "", "", now, false),
		Events: evs,
	}
	for _, a := range sn.Apps {
		st.Apps = append(st.Apps, appView(a, sn))
	}
	keySince := map[string]time.Time{}
	for _, rec := range sn.Servers {
		keySince[rec.Server.Name] = rec.KeySince()
	}
	for _, v := range s.serverViews(sn, statuses) {
		st.Servers = append(st.Servers, console.Server{Server: v, KeySince: keySince[v.Spec.Name]})
	}
	for _, rec := range statuses {
		if len(rec.Status.Drops) > 0 {
			st.Drops = append(st.Drops, console.HostDrops{Server: rec.Status.Name, Drops: rec.Status.Drops})
		}
	}
	if st.Verify, err = s.lastVerifyRuns(ctx, sn); err != nil {
		return nil, err
	}
	return st, nil
}

func (c consoleSource) Wait(ctx context.Context, rev int64) (int64, bool) {
	return c.s.revs.wait(ctx, rev)
}

// lastVerifyRuns is the newest stored verify run of each app of sn (see
// report.go: `corridor verify` posts every run), with one summary line per
// check that did not pass.
func (s *Server) lastVerifyRuns(ctx context.Context, sn *store.Snapshot) ([]console.VerifyRun, error) {
	runs, err := s.st.LastVerifyRuns(ctx, true)
	if err != nil {
		return nil, err
	}
	var out []console.VerifyRun
	for _, run := range runs {
		if _, ok := sn.App(run.App); !ok {
			continue
		}
		v := console.VerifyRun{App: run.App, Time: run.Time, Passed: run.OK, Checks: run.Checks, Failed: run.Failed + run.Incomplete}
		var rep verify.Report
		if err := json.Unmarshal(run.Report, &rep); err == nil {
			for _, c := range rep.Checks {
				if c.OK {
					continue
				}
				to := c.ToTask
				if to == "" {
					to = "outside " + c.ToAddr
				}
				v.Summary = append(v.Summary, fmt.Sprintf("%s -> %s %s/%d: expected %s, observed %s", c.FromTask, to, c.Protocol, c.Port, c.Expect, c.Observed))
			}
		}
		out = append(out, v)
	}
	return out, nil
}

// revWatch follows the store's revision with one etcd watch on the whole
// keyspace, for the console's live pages: many pages, one watch. It is
// the fleet-wide sibling of the hub's per-host wake-ups.
type revWatch struct {
	mu      sync.Mutex
	rev     int64
	changed chan struct{}
	closed  bool
}

func newRevWatch() *revWatch { return &revWatch{changed: make(chan struct{})} }

func (w *revWatch) current() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rev
}

func (w *revWatch) set(rev int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if rev <= w.rev {
		return
	}
	w.rev = rev
	close(w.changed)
	w.changed = make(chan struct{})
}

// run keeps the revision until ctx ends, watching again after a broken
// watch.
func (w *revWatch) run(ctx context.Context, st *store.Store, log *slog.Logger) {
	for ctx.Err() == nil {
		resp, err := st.Client().Get(ctx, st.Prefix()+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			log.Warn("console revision watch: read revision", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		w.set(resp.Header.Revision)
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for r := range st.Client().Watch(wctx, st.Prefix()+"/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if err := r.Err(); err != nil {
				log.Warn("console revision watch broken; watching again", "err", err)
				break
			}
			w.set(r.Header.Revision)
		}
		cancel()
	}
}

// wait returns once the revision is above rev (true), or when ctx ends or
// the watch closes (false).
func (w *revWatch) wait(ctx context.Context, rev int64) (int64, bool) {
	w.mu.Lock()
	if w.rev > rev {
		r := w.rev
		w.mu.Unlock()
		return r, true
	}
	if w.closed {
		w.mu.Unlock()
		return rev, false
	}
	ch := w.changed
	w.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return rev, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rev, w.rev > rev && !w.closed
}

// close wakes every waiter for good (server shutdown), so that live pages
// end their streams and the HTTP server can shut down.
func (w *revWatch) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.closed = true
		close(w.changed)
		w.changed = make(chan struct{})
	}
}
