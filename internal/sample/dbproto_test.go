package sample

import (
	"errors"
	"strings"
	"testing"
)

func TestParseCommand(t *testing.T) {
	long := strings.Repeat("k", MaxKeyLen+1)
	cases := []struct {
		line    string
		want    Command
		wantErr string
	}{
		{line: "PING\n", want: Command{Op: OpPing}},
		{line: "ping\r\n", want: Command{Op: OpPing}},
		{line: "GET a/b\n", want: Command{Op: OpGet, Key: "a/b"}},
		{line: "SET k hello world\n", want: Command{Op: OpSet, Key: "k", Value: "hello world"}},
		{line: "SET k \n", want: Command{Op: OpSet, Key: "k", Value: ""}},
		{line: "SET k {\"a\": 1}", want: Command{Op: OpSet, Key: "k", Value: `{"a": 1}`}},
		{line: "LIST\n", want: Command{Op: OpList}},
		{line: "LIST order/\n", want: Command{Op: OpList, Key: "order/"}},
		{line: "\n", wantErr: "empty command"},
		{line: "PING x\n", wantErr: "no argument"},
		{line: "GET\n", wantErr: "needs a key"},
		{line: "GET \n", wantErr: "key is empty"},
		{line: "GET a b\n", wantErr: "byte 1 (0x20)"},
		{line: "SET k\n", wantErr: "needs a value"},
		{line: "SET\n", wantErr: "needs a key"},
		{line: "SET  v\n", wantErr: "key is empty"},
		{line: "SET k\x01 v\n", wantErr: "byte 1 (0x01)"},
		{line: "GET " + long + "\n", wantErr: "over the limit of 256"},
		{line: "SET k " + strings.Repeat("v", MaxValueLen+1), wantErr: "value is"},
		{line: "DEL k\n", wantErr: `unknown command "DEL"`},
		{line: "SET k a\rb\n", wantErr: "CR or LF"},
		{line: "LIST a b\n", wantErr: "prefix:"},
	}
	for _, c := range cases {
		got, err := ParseCommand([]byte(c.line))
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("ParseCommand(%q) error = %v, want one containing %q", c.line, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseCommand(%q): %v", c.line, err)
			continue
		}
		if got != c.want {
			t.Errorf("ParseCommand(%q) = %+v, want %+v", c.line, got, c.want)
		}
	}
	if _, err := ParseCommand(make([]byte, MaxLineLen+1)); !errors.Is(err, ErrLineTooLong) {
		t.Errorf("over-long line: error = %v, want ErrLineTooLong", err)
	}
}

// FuzzParseCommand checks that the parser never panics, that whatever it
// accepts obeys the protocol's limits, and that a parsed command renders
// back to a line that parses to the same command (the log depends on it).
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"PING\n", "SET k v\n", "GET k", "LIST p\n", "LIST\n", "SET k \n", "set K a b c\r\n", "\n", "GET \x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		cmd, err := ParseCommand(line)
		if err != nil {
			return
		}
		if len(cmd.Key) > MaxKeyLen || len(cmd.Value) > MaxValueLen {
			t.Fatalf("accepted over-long command %q", line)
		}
		if strings.ContainsAny(cmd.Key, " \r\n") || strings.ContainsAny(cmd.Value, "\r\n") {
			t.Fatalf("accepted forbidden bytes in %q: %+v", line, cmd)
		}
		again, err := ParseCommand([]byte(cmd.String() + "\n"))
		if err != nil {
			t.Fatalf("round trip of %q (%+v) as %q: %v", line, cmd, cmd.String(), err)
		}
		if again != cmd {
			t.Fatalf("round trip of %q: got %+v, want %+v", line, again, cmd)
		}
	})
}

func TestParsePeers(t *testing.T) {
	got, err := ParsePeers(" 100.64.0.2:5432, ,[fd00::1]:80")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != "100.64.0.2:5432" || got[1] != "[fd00::1]:80" {
		t.Fatalf("ParsePeers = %q", got)
	}
	for _, bad := range []string{"100.64.0.2", ":80", "host:port", "1.2.3.4:http"} {
		if _, err := ParsePeers(bad); err == nil || !strings.Contains(err.Error(), "peer") {
			t.Errorf("ParsePeers(%q) error = %v, want an error naming the peer", bad, err)
		}
	}
}
