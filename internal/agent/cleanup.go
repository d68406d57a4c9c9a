package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
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
	for _, t := range tasks {
		log.Info("removing guest", "task", t)
		if err := guests.Remove(ctx, t); err != nil {
			errs = append(errs, fmt.Errorf("remove guest %s: %w", t, err))
		}
	}
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
