package image

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// debInfo names a kernel package file and what identifies its contents.
type debInfo struct {
	Path string // local .deb
	ID   string // content identity: the archive's SHA256 or the file's
}

// resolveKernelPackage turns a meta package (linux-image-amd64) into the
// versioned package it depends on (linux-image-6.1.0-56-amd64). A name
// that is already versioned is returned as it is.
func resolveKernelPackage(ctx context.Context, pkg string) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", pkg).Output()
	if err != nil {
		return "", fmt.Errorf("image: apt-cache depends %s: %w (is the package list up to date? try apt-get update)", pkg, exitDetail(err))
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return f[1], nil
		}
	}
	return pkg, nil
}

// downloadKernel fetches the kernel package into cacheDir with apt-get
// download (no installation), reusing a file already there. The package
// archive's SHA256, from --print-uris, identifies it without reading the
// whole file.
func downloadKernel(ctx context.Context, pkg, cacheDir string) (debInfo, error) {
	real, err := resolveKernelPackage(ctx, pkg)
	if err != nil {
		return debInfo{}, err
	}
	out, err := exec.CommandContext(ctx, "apt-get", "download", "--print-uris", real).Output()
	if err != nil {
		return debInfo{}, fmt.Errorf("image: apt-get download --print-uris %s: %w", real, exitDetail(err))
	}
	// 'http://.../linux-image-....deb' linux-image-..._amd64.deb 70550672 SHA256:...
	f := strings.Fields(strings.TrimSpace(string(out)))
	if len(f) < 4 || !strings.HasSuffix(f[1], ".deb") {
		return debInfo{}, fmt.Errorf("image: unexpected apt-get --print-uris output for %s: %q", real, out)
	}
	name, id := filepath.Base(f[1]), f[3]
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return debInfo{}, fmt.Errorf("image: cache dir: %w", err)
	}
	p := filepath.Join(cacheDir, name)
	if _, err := os.Stat(p); err == nil {
		return debInfo{Path: p, ID: id}, nil
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", real)
	cmd.Dir = cacheDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return debInfo{}, fmt.Errorf("image: apt-get download %s: %w: %s", real, err, lastLines(string(out), 5))
	}
	if _, err := os.Stat(p); err != nil {
		return debInfo{}, fmt.Errorf("image: apt-get download %s did not leave %s: %w", real, name, err)
	}
	return debInfo{Path: p, ID: id}, nil
}

// unpackedKernel is a kernel package extracted with dpkg-deb -x.
type unpackedKernel struct {
	Version string // "6.1.0-56-amd64"
	BzImage string
	Modules string // lib/modules/<version>
}

func unpackDeb(ctx context.Context, deb, dir string) (unpackedKernel, error) {
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
		return unpackedKernel{}, fmt.Errorf("image: dpkg-deb -x %s: %w: %s", deb, err, lastLines(string(out), 5))
	}
	imgs, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(imgs) != 1 {
		return unpackedKernel{}, fmt.Errorf("image: %s holds %d kernels under /boot, want exactly one", deb, len(imgs))
	}
	ver := strings.TrimPrefix(filepath.Base(imgs[0]), "vmlinuz-")
	mods := filepath.Join(dir, "lib", "modules", ver)
	if _, err := os.Stat(mods); err != nil {
		return unpackedKernel{}, fmt.Errorf("image: %s has no modules for %s: %w", deb, ver, err)
	}
	return unpackedKernel{Version: ver, BzImage: imgs[0], Modules: mods}, nil
}

// compressions are the payload formats a bzImage may use, with the magic
// that starts each and the command that decompresses it (as the kernel's
// scripts/extract-vmlinux does).
var compressions = []struct {
	magic []byte
	cmd   []string
}{
	{[]byte("\xfd7zXZ\x00"), []string{"xz", "-dc", "--single-stream"}},
	{[]byte("\x28\xb5\x2f\xfd"), []string{"zstd", "-dc"}},
	{[]byte("\x1f\x8b\x08"), []string{"gzip", "-dc"}},
	{[]byte("\x02\x21\x4c\x18"), []string{"lz4", "-dc"}},
}

// extractVmlinux writes the uncompressed ELF kernel inside bzImage to dst.
// Under TCG a guest decompressing its own kernel costs seconds; QEMU loads
// an ELF vmlinux with a PVH note directly.
func extractVmlinux(ctx context.Context, bzImage, dst string) error {
	b, err := os.ReadFile(bzImage)
	if err != nil {
		return fmt.Errorf("image: read kernel: %w", err)
	}
	var tried []string
	for _, c := range compressions {
		for off := 0; ; {
			i := bytes.Index(b[off:], c.magic)
			if i < 0 {
				break
			}
			off += i
			var out bytes.Buffer
			cmd := exec.CommandContext(ctx, c.cmd[0], c.cmd[1:]...)
			cmd.Stdin = bytes.NewReader(b[off:])
			cmd.Stdout = &out
			// Trailing data after the stream makes some tools complain
			// after writing everything: the ELF check decides.
			_ = cmd.Run()
			if isELF(out.Bytes()) {
				if err := os.WriteFile(dst, out.Bytes(), 0o644); err != nil {
					return fmt.Errorf("image: write vmlinux: %w", err)
				}
				return nil
			}
			off++
		}
		tried = append(tried, c.cmd[0])
	}
	return fmt.Errorf("image: no ELF kernel found in %s (tried %s; are they installed?)", bzImage, strings.Join(tried, ", "))
}

func isELF(b []byte) bool {
	if len(b) < 64 || !bytes.HasPrefix(b, []byte("\x7fELF")) {
		return false
	}
	_, err := elf.NewFile(bytes.NewReader(b))
	return err == nil
}

// moduleIndex maps module names (with '_', as modinfo spells them) to
// their files under a kernel's lib/modules/<version>.
func moduleIndex(modDir string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".ko") {
			return nil
		}
		idx[moduleName(d.Name())] = p
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("image: index modules: %w", err)
	}
	return idx, nil
}

func moduleName(file string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(file), ".ko"), "-", "_")
}

// moduleDepends reads the "depends=" field of a module's .modinfo
// section (depmod's source, so no modules.dep is needed).
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("image: module %s: %w", path, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("image: module %s has no .modinfo section", path)
	}
	b, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("image: module %s: %w", path, err)
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// loadOrder returns the wanted modules and everything they depend on,
// each after its dependencies, ties broken by name so that the order is
// stable. Modules built into the kernel (builtin) are skipped.
func loadOrder(want []string, builtin map[string]bool, deps func(string) ([]string, error)) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = strings.ReplaceAll(name, "-", "_")
		if builtin[name] {
			return nil
		}
		switch state[name] {
		case 1:
			return fmt.Errorf("image: module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		case 2:
			return nil
		}
		state[name] = 1
		ds, err := deps(name)
		if err != nil {
			return err
		}
		ds = append([]string(nil), ds...)
		sort.Strings(ds)
		for _, d := range ds {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, name)
		return nil
	}
	names := append([]string(nil), want...)
	sort.Strings(names)
	for _, n := range names {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// builtinModules reads modules.builtin: modules compiled into the kernel
// need no file.
func builtinModules(modDir string) map[string]bool {
	out := map[string]bool{}
	b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			out[moduleName(l)] = true
		}
	}
	return out
}

func exitDetail(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, lastLines(string(ee.Stderr), 5))
	}
	return err
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
