package dataplane

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KeyFile is the name of the WireGuard private key file in the state
// directory. The private key never leaves the host: only its public key is
// sent to the server.
const KeyFile = "wireguard.key"

// LoadOrCreateKey returns the host's WireGuard private key from
// <dir>/wireguard.key, making a new one (file mode 0600, directory 0700) if
// the file does not exist. A key file readable by others is refused.
func LoadOrCreateKey(dir string) (wgtypes.Key, error) {
	if dir == "" {
		return wgtypes.Key{}, errors.New("dataplane: state directory is empty")
	}
	p := filepath.Join(dir, KeyFile)
	b, err := os.ReadFile(p)
	switch {
	case err == nil:
		fi, err := os.Stat(p)
		if err != nil {
			return wgtypes.Key{}, fmt.Errorf("stat key file: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return wgtypes.Key{}, fmt.Errorf("key file %s has mode %#o: run chmod 600 on it (or remove it to make a new key)", p, fi.Mode().Perm())
		}
		k, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
		if err != nil {
			return wgtypes.Key{}, fmt.Errorf("key file %s: %w", p, err)
		}
		return k, nil
	case !errors.Is(err, fs.ErrNotExist):
		return wgtypes.Key{}, fmt.Errorf("read key file: %w", err)
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return wgtypes.Key{}, fmt.Errorf("make state directory: %w", err)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate WireGuard key: %w", err)
	}
	// Write to a temporary file and rename, so that a crash never leaves a
	// truncated key behind; the file is 0600 from its creation on.
	tmp, err := os.CreateTemp(dir, ".wireguard.key-*")
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("write key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return wgtypes.Key{}, fmt.Errorf("write key file: %w", err)
	}
	if _, err := tmp.WriteString(k.String() + "\n"); err != nil {
		tmp.Close()
		return wgtypes.Key{}, fmt.Errorf("write key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return wgtypes.Key{}, fmt.Errorf("write key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return wgtypes.Key{}, fmt.Errorf("write key file: %w", err)
	}
	// Link rather than rename: if another process made the key meanwhile,
	// keep theirs.
	if err := os.Link(tmp.Name(), p); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return LoadOrCreateKey(dir)
		}
		return wgtypes.Key{}, fmt.Errorf("write key file: %w", err)
	}
	return k, nil
}

// KeyGenerationFile holds, beside KeyFile, the generation the key was
// made for (see RotateKey). No file: generation 0, the first key.
const KeyGenerationFile = "wireguard.generation"

// LoadKeyGeneration reads <dir>/wireguard.generation (0 when absent).
func LoadKeyGeneration(dir string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(dir, KeyGenerationFile))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read key generation: %w", err)
	}
	g, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || g < 0 {
		return 0, fmt.Errorf("key generation file %s holds %q, not a generation: remove it (the next rotation writes it again)", filepath.Join(dir, KeyGenerationFile), strings.TrimSpace(string(b)))
	}
	return g, nil
}
