package image

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The pieces of Build that other image builders reuse (internal/vmhost
// builds a VM host image from the same kernel package).

// FetchKernel returns a local kernel package: deb when given (identified
// by its SHA256), else pkg fetched with `apt-get download` into cacheDir
// (identified by the archive's SHA256).
func FetchKernel(ctx context.Context, deb, pkg, cacheDir string) (path, id string, err error) {
	if deb != "" {
		sum, err := fileSHA256(deb)
		if err != nil {
			return "", "", fmt.Errorf("image: kernel package: %w", err)
		}
		return deb, "SHA256:" + sum, nil
	}
	if pkg == "" {
		pkg = DefaultKernelPackage
	}
	if cacheDir == "" {
		cacheDir = DefaultCacheDir
	}
	d, err := downloadKernel(ctx, pkg, cacheDir)
	return d.Path, d.ID, err
}

// Kernel is a kernel package unpacked into a directory.
type Kernel struct {
	Version string // "6.1.0-57-amd64"
	// Vmlinux is the uncompressed ELF kernel QEMU boots directly.
	Vmlinux string
	// ModDir is its lib/modules/<version>.
	ModDir string
}

// UnpackKernel unpacks the kernel package deb into dir and extracts its
// ELF vmlinux to dir/vmlinux.
func UnpackKernel(ctx context.Context, deb, dir string) (Kernel, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("image: %w", err)
	}
	k, err := unpackDeb(ctx, deb, filepath.Join(dir, "deb"))
	if err != nil {
		return Kernel{}, err
	}
	out := filepath.Join(dir, KernelFile)
	if err := extractVmlinux(ctx, k.BzImage, out); err != nil {
		return Kernel{}, err
	}
	return Kernel{Version: k.Version, Vmlinux: out, ModDir: k.Modules}, nil
}

// ModuleClosure returns the files (relative to k.ModDir) of the wanted
// modules and of everything they depend on, each after its dependencies;
// modules built into the kernel need none and are left out.
func (k Kernel) ModuleClosure(want []string) ([]string, error) {
	idx, err := moduleIndex(k.ModDir)
	if err != nil {
		return nil, err
	}
	order, err := loadOrder(want, builtinModules(k.ModDir), func(name string) ([]string, error) {
		p, ok := idx[name]
		if !ok {
			return nil, fmt.Errorf("image: module %s is not in kernel %s", name, k.Version)
		}
		return moduleDepends(p)
	})
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(order))
	for _, m := range order {
		rel, err := filepath.Rel(k.ModDir, idx[m])
		if err != nil {
			return nil, err
		}
		out = append(out, rel)
	}
	return out, nil
}

// ModulesUnder lists the names of the modules in the given directories
// of k.ModDir (such as "kernel/net/netfilter").
func (k Kernel) ModulesUnder(dirs ...string) ([]string, error) {
	var out []string
	for _, d := range dirs {
		err := filepath.WalkDir(filepath.Join(k.ModDir, d), func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !e.IsDir() && strings.HasSuffix(p, ".ko") {
				out = append(out, moduleName(p))
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("image: modules under %s: %w", d, err)
		}
	}
	return out, nil
}

// WriteArchive writes the directory tree root as an initramfs (cpio
// "newc", entries sorted, owners and times zeroed, so that the same tree
// gives the same bytes), with a /dev/console device node added so that
// the kernel can give init its console.
func WriteArchive(w io.Writer, root string) error {
	ar := newArchive()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		perm := uint32(st.Mode().Perm())
		switch {
		case st.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			ar.symlink(rel, t)
		case st.IsDir():
			ar.dir(rel)
			e := ar.entries[rel]
			e.Mode = modeDir | perm
			ar.entries[rel] = e
		case st.Mode().IsRegular():
			path, size := p, st.Size()
			ar.add(entry{Name: rel, Mode: modeFile | perm, Open: func() (io.ReadCloser, int64, error) {
				f, err := os.Open(path)
				return f, size, err
			}})
		default:
			return fmt.Errorf("image: %s: not a file, directory or symlink", p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("image: archive %s: %w", root, err)
	}
	ar.dir("dev")
	ar.add(entry{Name: "dev/console", Mode: modeChar | 0o600, RdevMajor: 5, RdevMinor: 1})
	return ar.writeTo(w)
}
