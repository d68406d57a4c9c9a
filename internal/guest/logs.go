package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// DefaultLogMaxBytes is the size past which task.log is rotated; one old
// file (task.log.1) is kept.
const DefaultLogMaxBytes = 10 << 20

// RotateLog moves the log aside when it has grown past max. While the
// program runs it holds the file open for appending, so renaming would
// leave it writing to the old file: copyTruncate copies then truncates
// in place (O_APPEND writers continue at the new end). Lines written
// between the copy and the truncation are lost, as with logrotate's
// copytruncate; a rotation between two runs renames instead and loses
// nothing.
func RotateLog(path string, max int64, copyTruncate bool) error {
	st, err := os.Stat(path)
	if err != nil || st.Size() <= max {
		return nil
	}
	old := path + ".1"
	if !copyTruncate {
		if err := os.Rename(path, old); err != nil {
			return fmt.Errorf("guest: rotate %s: %w", path, err)
		}
		return nil
	}
	src, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("guest: rotate %s: %w", path, err)
	}
	defer src.Close()
	tmp := old + ".tmp"
	dst, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("guest: rotate %s: %w", path, err)
	}
	_, cerr := io.Copy(dst, src)
	if err := errors.Join(cerr, dst.Close()); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("guest: rotate %s: %w", path, err)
	}
	if err := os.Rename(tmp, old); err != nil {
		return fmt.Errorf("guest: rotate %s: %w", path, err)
	}
	if err := os.Truncate(path, 0); err != nil {
		return fmt.Errorf("guest: rotate %s: %w", path, err)
	}
	return nil
}

// TailLog writes the last lines of task's log to w (all of it when lines
// < 0) and, with follow, keeps writing what is appended until writing to
// w fails. The agent serves this to `corridor logs TASK`.
func TailLog(stateDir, task string, lines int, follow bool, w io.Writer) error {
	return TailLogContext(context.Background(), stateDir, task, lines, follow, w)
}

// followPoll is how often a followed log is checked for growth.
const followPoll = 200 * time.Millisecond

// TailLogContext is TailLog that stops following when ctx ends (then it
// returns nil).
func TailLogContext(ctx context.Context, stateDir, task string, lines int, follow bool, w io.Writer) error {
	path := LogPath(stateDir, task)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("guest: no log for task %s: %w", task, err)
	}
	defer func() { f.Close() }()
	off, err := tailOffset(f, lines)
	if err != nil {
		return fmt.Errorf("guest: read log of task %s: %w", task, err)
	}
	if off, err = copyFrom(f, off, w); err != nil {
		return err
	}
	if !follow {
		return nil
	}
	t := time.NewTicker(followPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cur, err := f.Stat()
		if err != nil {
			return fmt.Errorf("guest: read log of task %s: %w", task, err)
		}
		if cur.Size() < off { // truncated in place (copy-truncate rotation)
			off = 0
		}
		if off, err = copyFrom(f, off, w); err != nil {
			return err
		}
		// Renamed away (rotation between runs): finish the old file, then
		// go on with the new one once it exists.
		if st, err := os.Stat(path); err == nil && !os.SameFile(st, cur) {
			nf, err := os.Open(path)
			if err != nil {
				continue
			}
			f.Close()
			f, off = nf, 0
		}
	}
}

// copyFrom copies f from off to its current end into w and returns the
// new offset.
func copyFrom(f *os.File, off int64, w io.Writer) (int64, error) {
	n, err := io.Copy(w, io.NewSectionReader(f, off, 1<<62))
	if err != nil {
		return off + n, fmt.Errorf("guest: write log: %w", err)
	}
	return off + n, nil
}

// tailOffset finds where the last n lines of f start, reading backwards
// in blocks so that a large log is not read whole.
func tailOffset(f *os.File, n int) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	if n < 0 {
		return 0, nil
	}
	if n == 0 {
		return size, nil
	}
	const block = 32 << 10
	buf := make([]byte, block)
	end := size
	seen := 0
	for end > 0 {
		start := max(end-block, 0)
		b := buf[:end-start]
		if _, err := f.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] != '\n' {
				continue
			}
			// The newline that ends the file terminates the last line;
			// it does not start a new one.
			if start+int64(i) == size-1 {
				continue
			}
			seen++
			if seen == n {
				return start + int64(i) + 1, nil
			}
		}
		end = start
	}
	return 0, nil
}
