package image

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// cpio mode bits (from <sys/stat.h>): the newc format stores st_mode.
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeChar    = 0o020000
)

// entry is one member of the initramfs archive.
type entry struct {
	Name      string // path without leading "/"
	Mode      uint32 // type bits | permissions
	Data      []byte // file contents, or the symlink target
	Open      func() (io.ReadCloser, int64, error)
	RdevMajor uint32
	RdevMinor uint32
}

// archive is an initramfs being assembled: parents are added before their
// children, and entries are written sorted so that the same inputs give
// the same bytes (mtime and owner are zero).
type archive struct {
	entries map[string]entry
}

func newArchive() *archive { return &archive{entries: map[string]entry{}} }

func (a *archive) dir(name string) {
	name = strings.Trim(path.Clean("/"+name), "/")
	if name == "" {
		return
	}
	if _, ok := a.entries[name]; ok {
		return
	}
	a.dir(path.Dir(name))
	a.entries[name] = entry{Name: name, Mode: modeDir | 0o755}
}

func (a *archive) add(e entry) {
	e.Name = strings.Trim(path.Clean("/"+e.Name), "/")
	a.dir(path.Dir(e.Name))
	a.entries[e.Name] = e
}

func (a *archive) file(name string, perm uint32, data []byte) {
	a.add(entry{Name: name, Mode: modeFile | perm, Data: data})
}

func (a *archive) symlink(name, target string) {
	a.add(entry{Name: name, Mode: modeSymlink | 0o777, Data: []byte(target)})
}

// writeTo writes the archive in the "newc" format the kernel unpacks.
func (a *archive) writeTo(w io.Writer) error {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	// Sorted paths put every directory before what it holds.
	sort.Strings(names)
	bw := bufio.NewWriterSize(w, 1<<20)
	ino := uint32(1)
	for _, n := range names {
		if err := writeEntry(bw, a.entries[n], ino); err != nil {
			return fmt.Errorf("image: cpio %s: %w", n, err)
		}
		ino++
	}
	if err := writeEntry(bw, entry{Name: "TRAILER!!!"}, 0); err != nil {
		return err
	}
	return bw.Flush()
}

func writeEntry(w *bufio.Writer, e entry, ino uint32) error {
	var size int64
	var body io.Reader
	switch {
	case e.Open != nil:
		rc, n, err := e.Open()
		if err != nil {
			return err
		}
		defer rc.Close()
		size, body = n, io.LimitReader(rc, n)
	default:
		size, body = int64(len(e.Data)), strings.NewReader(string(e.Data))
	}
	if size > 0xffffffff {
		return fmt.Errorf("file of %d bytes is too large for cpio", size)
	}
	nlink := uint32(1)
	if e.Mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, e.Mode, 0, 0, nlink, 0, uint32(size), 0, 0, e.RdevMajor, e.RdevMinor, len(e.Name)+1, 0)
	if _, err := w.WriteString(hdr + e.Name + "\x00"); err != nil {
		return err
	}
	if err := pad(w, 110+len(e.Name)+1); err != nil {
		return err
	}
	n, err := io.Copy(w, body)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("short read: %d of %d bytes", n, size)
	}
	return pad(w, int(size))
}

// pad aligns the stream to 4 bytes after n bytes of a part.
func pad(w *bufio.Writer, n int) error {
	if r := n % 4; r != 0 {
		_, err := w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}
