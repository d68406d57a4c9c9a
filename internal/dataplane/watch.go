package dataplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/nsrun"
)

// Watching the kernel state.
//
// Watch listens, in the host's namespace, to the kernel's notifications of
// changes to links, neighbours, IPv4 routes and rules (rtnetlink groups)
// and to nftables (the netfilter group NFNLGRP_NFTABLES). Any notification
// makes it apply the last applied state again at once, which repairs what
// was changed behind the data plane's back: a flushed or deleted nftables
// table, a deleted route or rule, a WireGuard device deleted by hand or
// gone with its killed datapath process (a new one is started with the
// same key and peers). Our own changes notify too; applying again then
// finds nothing to do and changes nothing, so the loop ends there.
// Notifications that arrive while a repair runs are folded into one more
// pass. The agent's periodic repair stays as a backstop for what sends no
// notification (a sysctl, a WireGuard peer removed by hand).

// Repair is one pass of Watch that changed something.
type Repair struct {
	// Noticed is when the first notification of the pass arrived.
	Noticed time.Time
	// Took is from Noticed to the end of the repair.
	Took    time.Duration
	Changes []string
	Err     error
}

// repairRetry is the pause before a failed repair is tried again.
const repairRetry = 200 * time.Millisecond

// rtnetlink multicast groups Watch listens to.
var watchRouteGroups = []uint{unix.RTNLGRP_LINK, unix.RTNLGRP_NEIGH, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV4_RULE}

// Watch repairs the data plane whenever the kernel reports a change to
// what it owns, until ctx ends; see above. It does nothing until Apply has
// succeeded once. onRepair, if not nil, is called after each pass that
// changed something or failed (from Watch's goroutine). It returns when
// ctx ends (nil) or when it cannot listen.
func (dp *Dataplane) Watch(ctx context.Context, onRepair func(Repair)) error {
	var socks []*nl.NetlinkSocket
	err := nsrun.DoHandle(dp.ns, func() error {
		rt, err := nl.Subscribe(unix.NETLINK_ROUTE, watchRouteGroups...)
		if err != nil {
			return fmt.Errorf("subscribe to rtnetlink: %w", err)
		}
		socks = append(socks, rt)
		nf, err := nl.Subscribe(unix.NETLINK_NETFILTER, unix.NFNLGRP_NFTABLES)
		if err != nil {
			return fmt.Errorf("subscribe to nftables notifications: %w", err)
		}
		socks = append(socks, nf)
		return nil
	})
	defer func() {
		for _, s := range socks {
			s.Close()
		}
	}()
	if err != nil {
		return fmt.Errorf("dataplane: watch: %w", err)
	}

	// noticed carries the time of the first notification not yet acted
	// on; one slot, so that a burst makes one pass (and one more if it
	// goes on during the pass).
	noticed := make(chan time.Time, 1)
	notify := func() {
		select {
		case noticed <- time.Now():
		default:
		}
	}
	done := make(chan struct{})
	defer close(done)
	for _, s := range socks {
		go func() {
			for {
				_, _, err := s.Receive()
				select {
				case <-done:
					return
				default:
				}
				if err != nil {
					if errors.Is(err, unix.ENOBUFS) {
						notify() // lost some: look anyway
						continue
					}
					if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
						continue
					}
					dp.log.Warn("data plane watch: netlink receive failed; the periodic repair still runs", "err", err)
					return
				}
				notify()
			}
		}()
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case at := <-noticed:
			r, ok := dp.repair(ctx, at)
			if r.Err != nil {
				// Try again soon even if nothing else changes.
				time.AfterFunc(repairRetry, notify)
			}
			if ok && onRepair != nil && (len(r.Changes) > 0 || r.Err != nil) {
				onRepair(r)
			}
		}
	}
}

// repair applies the last applied state again; ok is false when there is
// none yet.
func (dp *Dataplane) repair(ctx context.Context, at time.Time) (Repair, bool) {
	dp.mu.Lock()
	st := dp.last
	if st == nil {
		dp.mu.Unlock()
		return Repair{}, false
	}
	// Under the same hold as the apply: see applyLocked.
	d, err := buildDesired(*st)
	if err == nil {
		err = dp.applyLocked(ctx, *st, d)
	}
	changes := slices.Clone(dp.changes)
	dp.mu.Unlock()
	r := Repair{Noticed: at, Took: time.Since(at), Changes: changes, Err: err}
	switch {
	case err != nil:
		dp.log.Error("data plane repair failed; retrying at the next change or periodic repair", "err", err, "took", r.Took)
	case len(r.Changes) > 0:
		dp.log.Warn("repaired the data plane after a change behind its back", "changes", len(r.Changes), "took", r.Took)
	}
	return r, true
}

// rememberApplied keeps st as the state Watch repairs to.
func (dp *Dataplane) rememberApplied(st compile.HostState) {
	dp.last = &st
}
