package lab

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"time"

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

// StopAgent ends the agent of server name (SIGTERM, then SIGKILL after
// grace). Its guests and data plane stay, as on a real host.
func (l *Lab) StopAgent(name string, grace time.Duration) error {
	s := l.Server(name)
	if s == nil || s.Agent == nil {
		return fmt.Errorf("lab: no agent %q", name)
	}
	_, err := terminate(s.Agent.PID, s.Agent.StartTime, grace)
	return err
}

// StartAgent starts the agent of server name again, with the command line
// it was first started with, and records the new process.
func (l *Lab) StartAgent(name string) error {
	s := l.Server(name)
	if s == nil || s.Agent == nil {
		return fmt.Errorf("lab: no agent %q", name)
	}
	if alive(s.Agent) {
		return fmt.Errorf("lab: the agent of %s still runs (pid %d)", name, s.Agent.PID)
	}
	p, err := spawn(RoleAgent, s.Name, s.Namespace, s.Log, s.Agent.Args)
	if p != nil {
		s.Agent = p
		if serr := l.save(); serr != nil {
			return serr
		}
	}
	return err
}

// StopServer ends the control plane; agents go on serving their last state.
func (l *Lab) StopServer(grace time.Duration) error {
	if l.Control == nil {
		return errors.New("lab: no server recorded")
	}
	_, err := terminate(l.Control.PID, l.Control.StartTime, grace)
	return err
}

// StartServer starts the control plane again on its data directory and
// waits until it is ready.
func (l *Lab) StartServer(ctx context.Context, timeout time.Duration) error {
	if l.Control != nil && alive(l.Control) {
		return fmt.Errorf("lab: the server still runs (pid %d)", l.Control.PID)
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return l.startControl(ctx, Options{ReadyTimeout: timeout})
}
