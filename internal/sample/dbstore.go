package sample

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// LogFile is the name of the db's append-only log inside its data directory.
const LogFile = "db.log"

// ErrCorruptLog is returned by OpenStore when a record other than the last
// one fails its checksum: that is damage, not a torn write, and silently
// dropping later records would lose acknowledged data.
var ErrCorruptLog = errors.New("sample: db log is corrupt")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Entry is one key and its value.
type Entry struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Store is the db's durable map: an append-only log of SET records, each
// written and fsynced before the SET is acknowledged, replayed into memory
// at open.
//
// A record is one line: eight hex digits of the CRC-32C of the rest of the
// line, a space, then the SET command exactly as the protocol spells it.
// A crash mid-append leaves a last line without its newline or with a bad
// checksum: OpenStore drops it and truncates the file there, since such a
// record was never acknowledged. Damage anywhere else is ErrCorruptLog.
//
// Writers are serialised (one fsync per SET, no group commit): the sample
// app writes a handful of orders, and simplicity wins over throughput here.
type Store struct {
	path string
	log  *slog.Logger

	mu   sync.RWMutex
	f    *os.File
	data map[string]string
}

// OpenStore opens (creating if needed) the log in dir, takes an exclusive
// lock on it so that two db processes never share one directory, and
// replays it.
func OpenStore(dir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	if dir == "" {
		return nil, errors.New("data directory: must not be empty")
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, LogFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open db log: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock db log %s (is another db using this directory?): %w", path, err)
	}
	s := &Store{path: path, log: log, f: f, data: make(map[string]string)}
	if err := s.replay(); err != nil {
		f.Close()
		return nil, err
	}
	// Make the file's directory entry durable too, or a freshly created log
	// could vanish in a crash along with the records fsynced into it.
	if err := syncDir(dir); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// replay reads every record into memory, and cuts off a torn tail.
func (s *Store) replay() error {
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("db log %s: %w", s.path, err)
	}
	// A record is "crc SET key value\n": bounded by the protocol's line
	// limit plus the checksum prefix.
	r := bufio.NewReaderSize(s.f, MaxLineLen+16)
	var off int64
	records := 0
	for {
		line, err := r.ReadSlice('\n')
		if err == io.EOF {
			if len(line) > 0 {
				if err := s.truncateTail(off, "last record has no newline"); err != nil {
					return err
				}
			}
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			if err := s.damaged(r, off, "record longer than the line limit", false); err != nil {
				return err
			}
			break
		}
		if err != nil {
			return fmt.Errorf("read db log %s: %w", s.path, err)
		}
		cmd, perr := decodeRecord(line)
		if perr != nil {
			if err := s.damaged(r, off, perr.Error(), true); err != nil {
				return err
			}
			break
		}
		s.data[cmd.Key] = cmd.Value
		off += int64(len(line))
		records++
	}
	if _, err := s.f.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("db log %s: %w", s.path, err)
	}
	s.log.Info("db log replayed", "path", s.path, "records", records, "keys", len(s.data), "bytes", off)
	return nil
}

// damaged decides whether a bad record at off is a torn tail (nothing after
// it: truncate it away) or corruption in the middle of the log (an error).
// lineRead says whether the bad record's newline was already consumed.
func (s *Store) damaged(r *bufio.Reader, off int64, why string, lineRead bool) error {
	for !lineRead {
		_, err := r.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF:
			return s.truncateTail(off, why)
		case err != nil:
			return fmt.Errorf("read db log %s: %w", s.path, err)
		}
		lineRead = true
	}
	if _, err := r.Peek(1); err == io.EOF {
		return s.truncateTail(off, why)
	}
	return fmt.Errorf("%w: %s: record at byte %d: %s, and records follow it; "+
		"restore the directory from a backup or remove the damaged record by hand", ErrCorruptLog, s.path, off, why)
}

// truncateTail drops everything from off on: a record that was being
// appended when the process died, and so was never acknowledged.
func (s *Store) truncateTail(off int64, why string) error {
	s.log.Warn("db log has a torn last record; dropping it", "path", s.path, "offset", off, "reason", why)
	if err := s.f.Truncate(off); err != nil {
		return fmt.Errorf("truncate torn tail of %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", s.path, err)
	}
	return nil
}

// encodeRecord renders a SET as a log line.
func encodeRecord(key, value string) []byte {
	body := Command{Op: OpSet, Key: key, Value: value}.String()
	sum := crc32.Checksum([]byte(body), castagnoli)
	return []byte(fmt.Sprintf("%08x %s\n", sum, body))
}

// decodeRecord checks and parses one log line (with its newline).
func decodeRecord(line []byte) (Command, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	sumHex, body, ok := bytes.Cut(line, []byte(" "))
	if !ok || len(sumHex) != 8 {
		return Command{}, errors.New("no checksum")
	}
	want, err := strconv.ParseUint(string(sumHex), 16, 32)
	if err != nil {
		return Command{}, errors.New("checksum is not hex")
	}
	if crc32.Checksum(body, castagnoli) != uint32(want) {
		return Command{}, errors.New("checksum mismatch")
	}
	cmd, err := ParseCommand(body)
	if err != nil {
		return Command{}, fmt.Errorf("bad command: %w", err)
	}
	if cmd.Op != OpSet {
		return Command{}, fmt.Errorf("unexpected %s record", cmd.Op)
	}
	return cmd, nil
}

// Set stores value under key; when it returns nil the record is on disk.
func (s *Store) Set(key, value string) error {
	if err := checkKey([]byte(key)); err != nil {
		return err
	}
	if len(value) > MaxValueLen || strings.ContainsAny(value, "\r\n") {
		return fmt.Errorf("value: must be at most %d bytes without CR or LF", MaxValueLen)
	}
	rec := encodeRecord(key, value)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return errors.New("sample: store is closed")
	}
	if _, err := s.f.Write(rec); err != nil {
		return fmt.Errorf("append to %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", s.path, err)
	}
	s.data[key] = value
	return nil
}

// Get returns the value of key.
func (s *Store) Get(key string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.data[key]
	return v, ok
}

// List returns up to limit entries whose key starts with prefix, in key
// order, and whether more were left out.
func (s *Store) List(prefix string, limit int) ([]Entry, bool) {
	s.mu.RLock()
	keys := make([]string, 0, 16)
	for k := range s.data {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	truncated := len(keys) > limit
	if truncated {
		keys = keys[:limit]
	}
	out := make([]Entry, len(keys))
	for i, k := range keys {
		out[i] = Entry{Key: k, Value: s.data[k]}
	}
	s.mu.RUnlock()
	return out, truncated
}

// Len returns the number of keys.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.data)
}

// Close releases the log and its lock.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open data directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync data directory %s: %w", dir, err)
	}
	return nil
}
