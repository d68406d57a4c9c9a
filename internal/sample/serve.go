package sample

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// ServeHTTP serves h on ln until ctx is done, then shuts down gracefully,
// giving requests in flight up to five seconds.
func ServeHTTP(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("http serving", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("http serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if e := <-errc; e != nil && !errors.Is(e, http.ErrServerClosed) && err == nil {
		err = e
	}
	log.Info("http stopped", "addr", ln.Addr().String())
	return err
}

// DBPeers returns the db peers to use: flag (comma-separated "addr:port")
// when set, else CORRIDOR_PEERS_DB.
func DBPeers(flag string) ([]string, error) {
	src, list := "--db", flag
	if list == "" {
		src, list = EnvPeersDB, os.Getenv(EnvPeersDB)
	}
	peers, err := ParsePeers(list)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	if len(peers) == 0 {
		return nil, fmt.Errorf("no db peers: set %s (as the Corridor agent does for a class with a rule to db) or pass --db addr:port", EnvPeersDB)
	}
	return peers, nil
}

// AppURLs returns the app base URLs to use: flag (comma-separated URLs)
// when set, else CORRIDOR_PEERS_APP turned into http:// URLs.
func AppURLs(flag string) ([]string, error) {
	if flag != "" {
		var out []string
		for _, u := range strings.Split(flag, ",") {
			if u = strings.TrimSpace(u); u != "" {
				out = append(out, u)
			}
		}
		if len(out) == 0 {
			return nil, errors.New("--app: no URL given")
		}
		return out, nil
	}
	peers, err := ParsePeers(os.Getenv(EnvPeersApp))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvPeersApp, err)
	}
	if len(peers) == 0 {
		return nil, fmt.Errorf("no app peers: set %s (as the Corridor agent does for a class with a rule to app) or pass --app URL", EnvPeersApp)
	}
	return PeersToURLs(peers), nil
}
