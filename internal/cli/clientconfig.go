package cli

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/corridor-dev/corridor/internal/api"
)

// clientConfig is what `corridor login` stores: where the server is, the
// admin token, and the CA that signs the server's certificate.
type clientConfig struct {
	Server string `json:"server"`
	Token  string `json:"token"`
	CA     string `json:"ca,omitempty"` // PEM
}

// configPath is ~/.config/corridor/config.json ($XDG_CONFIG_HOME is
// honoured), or $CORRIDOR_CONFIG.
func configPath() (string, error) {
	if p := os.Getenv("CORRIDOR_CONFIG"); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the config directory: %w (set CORRIDOR_CONFIG)", err)
	}
	return filepath.Join(dir, "corridor", "config.json"), nil
}

func loadClientConfig() (clientConfig, string, error) {
	var c clientConfig
	p, err := configPath()
	if err != nil {
		return c, "", err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return c, p, nil
	}
	if err != nil {
		return c, p, fmt.Errorf("read %s: %w", p, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, p, fmt.Errorf("%s is not valid JSON (%v): run `corridor login` again", p, err)
	}
	return c, p, nil
}

func saveClientConfig(c clientConfig) (string, error) {
	p, err := configPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return "", err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return "", err
	}
	// WriteFile keeps the mode of an existing file: make sure.
	if err := os.Chmod(tmp, 0o600); err != nil {
		return "", err
	}
	return p, os.Rename(tmp, p)
}

// clientFlags are --server, --token and --ca, shared by every command
// that talks to the server, with the same names, defaults and order of
// precedence everywhere.
type clientFlags struct {
	server, token, ca string
}

func addClientFlags(cmd *cobra.Command) *clientFlags {
	f := &clientFlags{}
	cmd.Flags().StringVar(&f.server, "server", "", "server URL (default: $CORRIDOR_SERVER, then the login file)")
	cmd.Flags().StringVar(&f.token, "token", "", "admin token (default: $CORRIDOR_TOKEN, then the login file)")
	cmd.Flags().StringVar(&f.ca, "ca", "", "file of the CA that signs the server's certificate, DATA_DIR/ca.crt (default: $CORRIDOR_CA, then the login file)")
	return f
}

// client resolves server, token and CA (see resolve) into an API client.
func (f *clientFlags) client() (*api.Client, error) {
	server, token, tc, err := f.resolve()
	if err != nil {
		return nil, err
	}
	return api.NewClient(server, token, tc)
}

// resolve finds server, token and CA: flags, then environment
// (CORRIDOR_SERVER, CORRIDOR_TOKEN, CORRIDOR_CA as a file), then the login
// file.
func (f *clientFlags) resolve() (server, token string, tc *tls.Config, err error) {
	cfg, path, err := loadClientConfig()
	if err != nil {
		return "", "", nil, err
	}
	server = first(f.server, os.Getenv("CORRIDOR_SERVER"), cfg.Server)
	token = first(f.token, os.Getenv("CORRIDOR_TOKEN"), cfg.Token)
	if server == "" {
		return "", "", nil, errors.New("no server configured: run `corridor login --server https://HOST:7443 --token TOKEN --ca CA_FILE`, set CORRIDOR_SERVER, or pass --server")
	}
	if token == "" {
		return "", "", nil, fmt.Errorf("no admin token for %s: pass --token, set CORRIDOR_TOKEN or run `corridor login` (the token is in the server's data directory, admin.token)", server)
	}
	caPEM := []byte(cfg.CA)
	switch {
	case f.ca != "":
		if caPEM, err = os.ReadFile(f.ca); err != nil {
			return "", "", nil, fmt.Errorf("--ca: %w", err)
		}
		path = f.ca
	case os.Getenv("CORRIDOR_CA") != "":
		if caPEM, err = os.ReadFile(os.Getenv("CORRIDOR_CA")); err != nil {
			return "", "", nil, fmt.Errorf("CORRIDOR_CA: %w", err)
		}
		path = os.Getenv("CORRIDOR_CA")
	}
	if tc, err = tlsFor(caPEM); err != nil {
		return "", "", nil, fmt.Errorf("CA of %s: %w", path, err)
	}
	return server, token, tc, nil
}

func tlsFor(caPEM []byte) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caPEM) > 0 {
		pool, err := api.CAPool(caPEM)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// explain adds what to do next to the errors users meet most.
func explain(err error) error {
	if err == nil {
		return nil
	}
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	switch {
	case errors.As(err, &ua):
		return fmt.Errorf("%w\nthe server's certificate is signed by Corridor's own CA: run `corridor login --ca DATA_DIR/ca.crt ...` or set CORRIDOR_CA to that file", err)
	case errors.As(err, &he):
		return fmt.Errorf("%w\nthe server's certificate does not name this host: start the server with --advertise HOST", err)
	case api.HTTPStatus(err) == http.StatusUnauthorized:
		return fmt.Errorf("%w\ncheck the token: it is in the server's data directory (admin.token); run `corridor login` again", err)
	case strings.Contains(err.Error(), "connection refused"):
		return fmt.Errorf("%w\nis `corridor server` running there? check --server, CORRIDOR_SERVER or `corridor login`", err)
	}
	return err
}
