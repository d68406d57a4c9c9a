package artifact

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// maxEntries bounds the entries of one archive.
const maxEntries = 100_000

// unpack unpacks the blob of sum (a .tar.gz) into a temporary directory
// beside the trees and renames it to TreePath(sum) once complete.
func (c *Cache) unpack(sum string) (err error) {
	f, err := os.Open(c.BlobPath(sum))
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	defer f.Close()
	tmp, err := os.MkdirTemp(c.trees(), ".part-"+sum+"-*")
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := Untar(tmp, f, c.cfg.MaxUnpacked); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	if err := os.Rename(tmp, c.TreePath(sum)); err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	return syncDir(c.trees())
}

// Untar unpacks the gzip-compressed tar r into dir, which must be empty.
// It refuses (ErrUnsafeArchive) absolute names, names that leave dir,
// writing through a link, links that point out of dir, device nodes and
// FIFOs, and more than max bytes of files. Files keep only their
// permission bits, made readable by all (the task runs as an
// unprivileged user); set-id bits are dropped.
func Untar(dir string, r io.Reader, max int64) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("%w: not a gzip stream: %w", ErrUnsafeArchive, err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	var total int64
	var links []string
	for n := 0; ; n++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUnsafeArchive, err)
		}
		if n >= maxEntries {
			return fmt.Errorf("%w: more than %d entries", ErrUnsafeArchive, maxEntries)
		}
		name, err := cleanName(h.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		dst := filepath.Join(dir, filepath.FromSlash(name))
		if err := parentsAreDirs(dir, name); err != nil {
			return err
		}
		if err := notThere(dir, name); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return fmt.Errorf("artifact: unpack %s: %w", name, err)
			}
		case tar.TypeReg:
			total += h.Size
			if total > max {
				return fmt.Errorf("%w: more than %d bytes unpacked", ErrTooLarge, max)
			}
			if err := writeFile(dst, tr, h); err != nil {
				return fmt.Errorf("artifact: unpack %s: %w", name, err)
			}
		case tar.TypeSymlink:
			t := h.Linkname
			if path.IsAbs(t) || !inside(path.Join(path.Dir(name), t)) {
				return fmt.Errorf("%w: symbolic link %s points out of the archive (%s)", ErrUnsafeArchive, name, t)
			}
			if err := os.Symlink(t, dst); err != nil {
				return fmt.Errorf("artifact: unpack %s: %w", name, err)
			}
			links = append(links, dst)
		case tar.TypeLink:
			t, err := cleanName(h.Linkname)
			if err != nil {
				return err
			}
			src := filepath.Join(dir, filepath.FromSlash(t))
			if err := parentsAreDirs(dir, t); err != nil {
				return err
			}
			if st, err := os.Lstat(src); err != nil || !st.Mode().IsRegular() {
				return fmt.Errorf("%w: hard link %s to %s, which is not a file unpacked before it", ErrUnsafeArchive, name, t)
			}
			if err := os.Link(src, dst); err != nil {
				return fmt.Errorf("artifact: unpack %s: %w", name, err)
			}
		default:
			return fmt.Errorf("%w: %s is of a type an artifact may not hold (%c): only files, directories and links", ErrUnsafeArchive, name, h.Typeflag)
		}
	}
	// Every symbolic link must resolve inside dir, now that the whole
	// tree is there: a chain of links each inside lexically may still
	// lead out.
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	for _, l := range links {
		real, err := filepath.EvalSymlinks(l)
		if err != nil {
			return fmt.Errorf("%w: symbolic link %s does not resolve: %w", ErrUnsafeArchive, strings.TrimPrefix(l, dir+"/"), err)
		}
		if real != root && !strings.HasPrefix(real, root+string(filepath.Separator)) {
			return fmt.Errorf("%w: symbolic link %s leads out of the archive", ErrUnsafeArchive, strings.TrimPrefix(l, dir+"/"))
		}
	}
	return nil
}

// cleanName is a tar entry's name as a clean relative slash path, or an
// error if it is absolute or leaves the archive.
func cleanName(n string) (string, error) {
	if strings.ContainsRune(n, 0) || path.IsAbs(n) || strings.Contains(n, `\`) {
		return "", fmt.Errorf("%w: entry name %q is absolute or not a plain path", ErrUnsafeArchive, n)
	}
	c := path.Clean(n)
	if !inside(c) {
		return "", fmt.Errorf("%w: entry %q leaves the archive's directory", ErrUnsafeArchive, n)
	}
	return c, nil
}

// inside reports whether the clean relative path p stays within its root.
func inside(p string) bool {
	p = path.Clean(p)
	return p != ".." && !strings.HasPrefix(p, "../") && !path.IsAbs(p)
}

// parentsAreDirs refuses a name whose parent directories include a
// symbolic link (writing through it could land anywhere) or a file.
func parentsAreDirs(dir, name string) error {
	parts := strings.Split(name, "/")
	p := dir
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		st, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			return os.MkdirAll(filepath.Join(dir, filepath.FromSlash(path.Dir(name))), 0o755)
		}
		if err != nil {
			return fmt.Errorf("artifact: %w", err)
		}
		if !st.IsDir() {
			return fmt.Errorf("%w: %s is written through %s, which is not a directory", ErrUnsafeArchive, name, strings.TrimPrefix(p, dir+"/"))
		}
	}
	return nil
}

// notThere refuses an entry that would replace something already
// unpacked other than a directory (a file swapped for a link that a
// later entry would follow).
func notThere(dir, name string) error {
	if st, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(name))); err == nil && !st.IsDir() {
		return fmt.Errorf("%w: %s is given twice", ErrUnsafeArchive, name)
	}
	return nil
}

func writeFile(dst string, r io.Reader, h *tar.Header) error {
	mode := os.FileMode(0o644)
	if h.Mode&0o111 != 0 {
		mode = 0o755
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, r, h.Size); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode) // the umask may have taken bits
}

// programIn resolves run inside root: a regular, executable file whose
// real path stays inside root.
func programIn(root, run string) (string, error) {
	p := filepath.Join(root, filepath.FromSlash(run))
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("%w: run %q is not in the archive", ErrNoProgram, run)
	}
	rroot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return "", fmt.Errorf("artifact: %w", err)
	}
	if !strings.HasPrefix(real, rroot+string(filepath.Separator)) {
		return "", fmt.Errorf("%w: run %q leads out of the archive", ErrNoProgram, run)
	}
	st, err := os.Stat(real)
	if err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%w: run %q is not an executable file in the archive", ErrNoProgram, run)
	}
	return p, nil
}
