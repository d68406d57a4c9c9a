package server

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/corridor-dev/corridor/internal/atomicfile"
	"github.com/corridor-dev/corridor/internal/store"
)

// Token files in the data directory.
const (
	AdminTokenFile = "admin.token"
	JoinTokenFile  = "join.token"
	CACertFile     = "ca.crt"
)

// ensureToken returns the token called name (admin or join): the one in
// etcd if a server made it already, else the one in the data directory's
// file (a data directory moved onto a new etcd keeps its tokens), else a
// new one of 32 random bytes. It then writes the file, mode 0600, so that
// every server sharing the etcd has the same token on disk.
func ensureToken(ctx context.Context, st *store.Store, dataDir, name, file string) (string, error) {
	path := filepath.Join(dataDir, file)
	raw, err := st.EnsureSecret(ctx, name+"-token", func() ([]byte, error) {
		b, err := os.ReadFile(path)
		if err == nil && validToken(strings.TrimSpace(string(b))) {
			return []byte(strings.TrimSpace(string(b))), nil
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		buf := make([]byte, 32)
		if _, err := rand.Read(buf); err != nil {
			return nil, err
		}
		return []byte(hex.EncodeToString(buf)), nil
	})
	if err != nil {
		return "", fmt.Errorf("server: %s token: %w", name, err)
	}
	tok := string(raw)
	if err := atomicfile.Write(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("server: write %s token file: %w", name, err)
	}
	return tok, nil
}

func validToken(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// tokenEqual compares in constant time, so that the answer's timing says
// nothing about how much of a guess was right.
func tokenEqual(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
