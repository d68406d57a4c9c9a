package sample

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// The db line protocol. A client sends one command per line; the server
// answers each command before reading the next.
//
//	PING                 -> OK <task>            (the db task's name)
//	SET <key> <value>    -> OK                   (durable when answered)
//	GET <key>            -> VALUE <value> | NOTFOUND
//	LIST [<prefix>]      -> ENTRY <key> <value> ... then END <n> [truncated]
//	anything wrong       -> ERR <reason>
//
// A key is 1 to MaxKeyLen printable ASCII bytes without spaces. A value is
// the rest of the line after the single space that follows the key: any
// bytes but CR and LF, at most MaxValueLen, possibly empty. Verbs are
// case-insensitive. A line is at most MaxLineLen bytes with its newline; a
// longer line gets ERR and the connection is closed, because the server
// cannot find the start of the next command without reading an unbounded
// amount.
const (
	MaxKeyLen      = 256
	MaxValueLen    = 16 << 10
	MaxLineLen     = 32 << 10
	MaxListEntries = 1000
)

// Verbs of the db protocol.
const (
	OpPing = "PING"
	OpSet  = "SET"
	OpGet  = "GET"
	OpList = "LIST"
)

// ErrLineTooLong is returned for a line over MaxLineLen.
var ErrLineTooLong = errors.New("sample: line too long")

// Command is one parsed db request. For LIST, Key holds the prefix.
type Command struct {
	Op    string
	Key   string
	Value string
}

// String renders c as the line that ParseCommand reads back, without the
// newline.
func (c Command) String() string {
	switch c.Op {
	case OpPing:
		return OpPing
	case OpSet:
		return OpSet + " " + c.Key + " " + c.Value
	case OpList:
		if c.Key == "" {
			return OpList
		}
		return OpList + " " + c.Key
	default:
		return c.Op + " " + c.Key
	}
}

// ParseCommand parses one protocol line, with or without its trailing
// newline (a CR before it is dropped too). Errors say which part of the line
// is wrong, and are meant to be sent back to the client after "ERR ".
func ParseCommand(line []byte) (Command, error) {
	if len(line) > MaxLineLen {
		return Command{}, ErrLineTooLong
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if bytes.ContainsAny(line, "\r\n") {
		return Command{}, errors.New("line holds a CR or LF before its end")
	}
	verb, rest, hasRest := bytes.Cut(line, []byte(" "))
	op := strings.ToUpper(string(verb))
	switch op {
	case OpPing:
		if hasRest {
			return Command{}, errors.New("PING takes no argument")
		}
		return Command{Op: OpPing}, nil
	case OpGet:
		if !hasRest {
			return Command{}, errors.New("GET needs a key")
		}
		if err := checkKey(rest); err != nil {
			return Command{}, err
		}
		return Command{Op: OpGet, Key: string(rest)}, nil
	case OpSet:
		if !hasRest {
			return Command{}, errors.New("SET needs a key and a value")
		}
		key, value, ok := bytes.Cut(rest, []byte(" "))
		if !ok {
			return Command{}, errors.New("SET needs a value after the key (it may be empty, but the space must be there)")
		}
		if err := checkKey(key); err != nil {
			return Command{}, err
		}
		if len(value) > MaxValueLen {
			return Command{}, fmt.Errorf("value is %d bytes, over the limit of %d", len(value), MaxValueLen)
		}
		return Command{Op: OpSet, Key: string(key), Value: string(value)}, nil
	case OpList:
		if !hasRest || len(rest) == 0 {
			return Command{Op: OpList}, nil
		}
		if err := checkKey(rest); err != nil {
			return Command{}, fmt.Errorf("prefix: %w", err)
		}
		return Command{Op: OpList, Key: string(rest)}, nil
	case "":
		return Command{}, errors.New("empty command")
	default:
		return Command{}, fmt.Errorf("unknown command %q: want PING, SET, GET or LIST", truncate(string(verb), 32))
	}
}

// checkKey enforces the key alphabet: printable ASCII without space, so
// that a key never needs quoting in the protocol or the log.
func checkKey(k []byte) error {
	if len(k) == 0 {
		return errors.New("key is empty")
	}
	if len(k) > MaxKeyLen {
		return fmt.Errorf("key is %d bytes, over the limit of %d", len(k), MaxKeyLen)
	}
	for i, b := range k {
		if b < 0x21 || b > 0x7e {
			return fmt.Errorf("key byte %d (0x%02x) is not printable ASCII without space", i, b)
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
