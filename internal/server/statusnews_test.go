package server

import (
	"fmt"
	"log/slog"
	"testing"
)

// A heartbeat (the same applied revision, key generation and tasks, a
// later time) is not news; any of the three changing is. Red when
// setStatus calls every status news.
func TestStatusNews(t *testing.T) {
	h := newHub(nil, slog.New(slog.DiscardHandler))
	status := func(applied, keyGen int64, state, received string) []byte {
		return fmt.Appendf(nil, `{"status":{"appliedRevision":%d,"keyGeneration":%d,"tasks":[{"task":"a/web-1","state":%q}]},"received":%q}`,
			applied, keyGen, state, received)
	}
	for _, c := range []struct {
		what string
		raw  []byte
		news bool
	}{
		{"first status", status(5, 1, "starting", "2026-12-06T07:00:00Z"), true},
		{"heartbeat", status(5, 1, "starting", "2026-12-06T07:00:10Z"), false},
		{"task running", status(5, 1, "running", "2026-12-06T07:00:20Z"), true},
		{"heartbeat again", status(5, 1, "running", "2026-12-06T07:00:30Z"), false},
		{"revision applied", status(6, 1, "running", "2026-12-06T07:00:40Z"), true},
		{"new key", status(6, 2, "running", "2026-12-06T07:00:50Z"), true},
		{"not JSON", []byte("{"), false},
	} {
		if got := h.setStatus("s1", c.raw); got != c.news {
			t.Errorf("%s: news = %v, want %v", c.what, got, c.news)
		}
	}
}

// During a move, only a report with news from a host the move concerns
// asks for a reconcile; red when statusSeen ignores news.
func TestMoveReconcilesOnNewsOnly(t *testing.T) {
	s := &Server{ctrl: &controller{kick: make(chan struct{}, 1)}}
	s.ctrl.leader.Store(true)
	s.ctrl.moving.Store(true)
	s.ctrl.moveHosts = map[string]bool{"s1": true}
	kicked := func() bool {
		select {
		case <-s.ctrl.kick:
			return true
		default:
			return false
		}
	}
	for _, c := range []struct {
		host string
		news bool
		want bool
	}{
		{"s1", false, false},
		{"s1", true, true},
		{"s2", true, false},
	} {
		s.statusSeen(c.host, c.news)
		if got := kicked(); got != c.want {
			t.Errorf("status of %s (news %v): reconcile asked %v, want %v", c.host, c.news, got, c.want)
		}
	}
}
