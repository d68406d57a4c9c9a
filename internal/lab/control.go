package lab

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Client returns an API client for the lab's control plane, with the admin
// token and the lab's CA as the only root.
func (l *Lab) Client() (*api.Client, error) {
	tok, err := l.AdminToken()
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(l.CAFile)
	if err != nil {
		return nil, fmt.Errorf("lab: CA: %w", err)
	}
	pool, err := api.CAPool(pem)
	if err != nil {
		return nil, fmt.Errorf("lab: CA %s: %w", l.CAFile, err)
	}
	return api.NewClient(l.ServerURL, tok, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
}

// ready asks the control plane's /readyz.
func (l *Lab) ready(ctx context.Context) error {
	c, err := l.Client()
	if err != nil {
		return err
	}
	defer c.CloseIdleConnections()
	return c.Healthy(ctx)
}

// joined tells which servers the control plane lists as ready and has
// heard from (their agent reported status at least once).
func (l *Lab) joined(ctx context.Context) (map[string]bool, error) {
	list, err := l.listServers(ctx)
	if err != nil {
		return nil, err
	}
	m := make(map[string]bool, len(list))
	for _, s := range list {
		m[s.Spec.Name] = isJoined(s)
	}
	return m, nil
}

func isJoined(s api.Server) bool {
	return s.State == spec.ServerReady && !s.LastSeen.IsZero()
}

func (l *Lab) listServers(ctx context.Context) ([]api.Server, error) {
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	defer c.CloseIdleConnections()
	return c.ListServers(ctx)
}
