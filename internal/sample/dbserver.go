package sample

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// DBServer serves a Store over the line protocol (see ParseCommand).
type DBServer struct {
	Store *Store
	ID    Identity
	Log   *slog.Logger
	// MaxConns bounds concurrent clients; one over it gets "ERR busy" and
	// is closed. Zero means 256.
	MaxConns int
	// IdleTimeout closes a client that sends nothing for this long. Zero
	// means five minutes.
	IdleTimeout time.Duration
}

// Serve accepts clients on ln until ctx is done, then closes ln, lets each
// client finish the command it is executing (a SET in progress is completed
// and acknowledged), closes every connection and returns nil. It does not
// close the Store.
func (s *DBServer) Serve(ctx context.Context, ln net.Listener) error {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	maxConns := s.MaxConns
	if maxConns <= 0 {
		maxConns = 256
	}
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = 5 * time.Minute
	}

	var (
		mu    sync.Mutex
		conns = make(map[net.Conn]struct{})
		wg    sync.WaitGroup
	)
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			// Wake readers blocked waiting for a next command; a handler
			// busy executing one finishes and answers it, then sees ctx
			// done. Shutting the read side (rather than a read deadline,
			// which the handler resets) cannot be undone by the handler.
			if cr, ok := c.(interface{ CloseRead() error }); ok {
				cr.CloseRead()
			} else {
				c.SetReadDeadline(time.Now())
			}
		}
		mu.Unlock()
	})
	defer stop()

	log.Info("db serving", "addr", ln.Addr().String(), "keys", s.Store.Len())
	var acceptErr error
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				acceptErr = fmt.Errorf("db accept: %w", err)
			}
			break
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			break
		}
		if len(conns) >= maxConns {
			mu.Unlock()
			log.Warn("db refusing client: too many connections", "remote", c.RemoteAddr().String(), "max", maxConns)
			c.SetWriteDeadline(time.Now().Add(time.Second))
			io.WriteString(c, "ERR busy: too many connections\n")
			c.Close()
			continue
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			s.handle(ctx, c, idle, log)
		}()
	}
	wg.Wait()
	log.Info("db stopped", "addr", ln.Addr().String())
	return acceptErr
}

// handle runs one client's commands in order until it leaves, breaks the
// protocol in a way that cannot be recovered, or the server stops.
func (s *DBServer) handle(ctx context.Context, c net.Conn, idle time.Duration, log *slog.Logger) {
	remote := c.RemoteAddr().String()
	r := bufio.NewReaderSize(c, MaxLineLen)
	w := bufio.NewWriter(c)
	for {
		if ctx.Err() != nil {
			return
		}
		c.SetReadDeadline(time.Now().Add(idle))
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			log.Warn("db client sent an over-long line; closing", "remote", remote, "limit", MaxLineLen)
			fmt.Fprintf(w, "ERR line longer than %d bytes\n", MaxLineLen)
			w.Flush()
			return
		}
		if err != nil {
			// EOF, idle timeout, or shutdown. A last command without its
			// newline is not executed: the client did not finish sending it.
			return
		}
		s.exec(w, line, log, remote)
		// Only flush when the client has nothing more queued: pipelined
		// commands get their answers in one write.
		if r.Buffered() == 0 {
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

func (s *DBServer) exec(w *bufio.Writer, line []byte, log *slog.Logger, remote string) {
	cmd, err := ParseCommand(line)
	if err != nil {
		log.Debug("db bad command", "remote", remote, "err", err)
		fmt.Fprintf(w, "ERR %s\n", oneLine(err.Error()))
		return
	}
	switch cmd.Op {
	case OpPing:
		fmt.Fprintf(w, "OK %s\n", protoWord(s.ID.Task))
	case OpGet:
		if v, ok := s.Store.Get(cmd.Key); ok {
			fmt.Fprintf(w, "VALUE %s\n", v)
		} else {
			io.WriteString(w, "NOTFOUND\n")
		}
	case OpSet:
		if err := s.Store.Set(cmd.Key, cmd.Value); err != nil {
			log.Error("db write failed", "key", cmd.Key, "err", err)
			fmt.Fprintf(w, "ERR write failed: %s\n", oneLine(err.Error()))
			return
		}
		log.Debug("db set", "key", cmd.Key, "bytes", len(cmd.Value), "remote", remote)
		io.WriteString(w, "OK\n")
	case OpList:
		entries, truncated := s.Store.List(cmd.Key, MaxListEntries)
		for _, e := range entries {
			fmt.Fprintf(w, "ENTRY %s %s\n", e.Key, e.Value)
		}
		if truncated {
			fmt.Fprintf(w, "END %d truncated\n", len(entries))
		} else {
			fmt.Fprintf(w, "END %d\n", len(entries))
		}
	}
}

// oneLine keeps an error message on one protocol line.
func oneLine(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}

// protoWord makes a name safe to send as one word of a reply.
func protoWord(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r > '~' {
			return '_'
		}
		return r
	}, s)
}
