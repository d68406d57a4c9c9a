package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// Cleanup removes everything the agent made on this host: every guest the
// runtime knows, the data plane (corw0, corv0, routing rules and tables, the
// nftables table), and the stored desired state, so that a later start does
// not bring them back before the server speaks. The identity and the
// WireGuard key stay: the host remains a member of the cluster. It goes on
// past errors and returns them all.
func Cleanup(ctx context.Context, guests Guests, removeDataplane func(context.Context) error, stateDir string, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	var errs []error
	tasks, err := guests.List(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("list guests: %w", err))
	}
	errs = append(errs, removeGuests(ctx, guests, tasks, "removing guest", log)...)
	if removeDataplane != nil {
		log.Info("removing data plane")
		if err := removeDataplane(ctx); err != nil {
			errs = append(errs, fmt.Errorf("remove data plane: %w", err))
		}
	}
	if err := os.Remove(filepath.Join(stateDir, DesiredFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove stored desired state: %w", err))
	}
	return errors.Join(errs...)
}

// removeParallel bounds the guests removed at once. A removal mostly
// waits (its program's grace after SIGTERM, the cgroup emptying, the
// namespace going), so removals overlap well even on a small host; one at
// a time, an app of a thousand guests took minutes to leave a host.
const removeParallel = 8

// removeGuests removes tasks' guests, removeParallel at a time, and
// returns the errors in tasks' order. It returns when every removal has
// ended: the caller's next step (the data plane losing the removed guests'
// rules, their addresses given to new guests) must not overtake one.
func removeGuests(ctx context.Context, guests Guests, tasks []string, msg string, log *slog.Logger) []error {
	errs := make([]error, len(tasks))
	sem := make(chan struct{}, removeParallel)
	var wg sync.WaitGroup
	for i, t := range tasks {
		log.Info(msg, "task", t)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := guests.Remove(ctx, t); err != nil {
				errs[i] = fmt.Errorf("remove guest %s: %w", t, err)
			}
		}()
	}
	wg.Wait()
	var out []error
	for _, err := range errs {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}
