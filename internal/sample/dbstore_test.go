package sample

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := OpenStore(dir, quietLog())
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	return s
}

func TestStoreSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	for i := range 50 {
		if err := s.Set(fmt.Sprintf("k%02d", i), fmt.Sprintf("value %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Set("k07", "overwritten"); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openStore(t, dir)
	defer s.Close()
	if s.Len() != 50 {
		t.Fatalf("Len after reopen = %d, want 50", s.Len())
	}
	if v, ok := s.Get("k07"); !ok || v != "overwritten" {
		t.Fatalf("k07 = %q, %v; want the last write", v, ok)
	}
	entries, truncated := s.List("k1", 5)
	if !truncated || len(entries) != 5 || entries[0].Key != "k10" || entries[4].Key != "k14" {
		t.Fatalf("List(k1, 5) = %v, truncated %v", entries, truncated)
	}
}

func TestStoreTornTail(t *testing.T) {
	for name, tail := range map[string]string{
		"no newline":        "1234abcd SET half",
		"bad checksum":      "00000000 SET k9 never acknowledged\n",
		"garbage no header": "\x00\x00\x00\x00",
		"overlong":          strings.Repeat("x", MaxLineLen+100),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir)
			s.Set("a", "1")
			s.Set("b", "2")
			s.Close()
			path := filepath.Join(dir, LogFile)
			good, _ := os.ReadFile(path)
			appendFile(t, path, tail)

			s = openStore(t, dir)
			if s.Len() != 2 {
				t.Fatalf("Len = %d, want the 2 acknowledged records", s.Len())
			}
			// The torn tail is cut off, so a new record starts on a clean line.
			if err := s.Set("c", "3"); err != nil {
				t.Fatal(err)
			}
			s.Close()
			after, _ := os.ReadFile(path)
			if !strings.HasPrefix(string(after), string(good)) || strings.Contains(string(after), tail) {
				t.Fatalf("log after recovery = %q", after)
			}
			s = openStore(t, dir)
			defer s.Close()
			if v, _ := s.Get("c"); v != "3" || s.Len() != 3 {
				t.Fatalf("after recovery and a new write: c=%q len=%d", v, s.Len())
			}
		})
	}
}

func TestStoreCorruptMiddleIsAnError(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	s.Set("a", "1")
	s.Set("b", "2")
	s.Set("c", "3")
	s.Close()
	path := filepath.Join(dir, LogFile)
	b, _ := os.ReadFile(path)
	// Flip one byte of the second record's value.
	i := strings.Index(string(b), "SET b 2")
	b[i+6] = '9'
	os.WriteFile(path, b, 0o640)
	_, err := OpenStore(dir, quietLog())
	if !errors.Is(err, ErrCorruptLog) || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("OpenStore on a log damaged in the middle: %v, want ErrCorruptLog naming the checksum", err)
	}
}

func TestStoreLockedDirectory(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	defer s.Close()
	if _, err := OpenStore(dir, quietLog()); err == nil || !strings.Contains(err.Error(), "another db") {
		t.Fatalf("second OpenStore on one directory: %v, want a lock error", err)
	}
}

func TestStoreRejectsBadInput(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	for _, kv := range [][2]string{{"", "v"}, {"a b", "v"}, {"k", "x\ny"}, {"k", strings.Repeat("v", MaxValueLen+1)}} {
		if err := s.Set(kv[0], kv[1]); err == nil {
			t.Errorf("Set(%q, %.10q...) succeeded", kv[0], kv[1])
		}
	}
	if s.Len() != 0 {
		t.Fatalf("bad writes stored something: Len = %d", s.Len())
	}
}

func TestStoreConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				if err := s.Set(fmt.Sprintf("w%d/%02d", w, i), "x"); err != nil {
					t.Error(err)
				}
				s.List("w", 10)
			}
		}()
	}
	wg.Wait()
	s.Close()
	s = openStore(t, dir)
	defer s.Close()
	if s.Len() != 160 {
		t.Fatalf("Len = %d, want 160", s.Len())
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}
