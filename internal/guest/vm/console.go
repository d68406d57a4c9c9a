package vm

import (
	"bytes"
	"io"
	"os"
	"strings"
)

// consoleHas tells whether the console log holds line (as a prefix of a
// line) after offset off.
func consoleHas(path string, off int64, line string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, off, 1<<40))
	if err != nil {
		return false
	}
	for _, l := range bytes.Split(b, []byte("\n")) {
		if bytes.HasPrefix(bytes.TrimRight(l, "\r"), []byte(line)) {
			return true
		}
	}
	return false
}

// consoleTail returns the last n non-empty lines of the console log after
// offset off, joined with " | " so that they fit in a status message.
func consoleTail(path string, off int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	// The tail is all a status message needs; bound what is read.
	const window = 16 << 10
	if st.Size()-off > window {
		off = st.Size() - window
	}
	b, err := io.ReadAll(io.NewSectionReader(f, off, window))
	if err != nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(strings.TrimRight(l, "\r"))
		if l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}
