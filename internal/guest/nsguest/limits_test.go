package nsguest

import (
	"errors"
	"os"
	"testing"
)

// guest-init starts the program only on the agent's word that the CPU
// quota is set: red when awaitLimits returns without it.
func TestAwaitLimits(t *testing.T) {
	for _, c := range []struct {
		what   string
		answer []byte // what the agent sends after "sealed"; nil: it closes
		ok     bool
	}{
		{"quota set", []byte{limitedByte}, true},
		{"agent gone", nil, false},
		{"another byte", []byte{'x'}, false},
	} {
		agent, init, err := socketPair()
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- awaitLimits(init) }()
		var b [1]byte
		if n, err := agent.Read(b[:]); n != 1 || b[0] != sealedByte {
			t.Fatalf("%s: guest-init said %q, %v; want the sealed byte", c.what, b[:n], err)
		}
		if c.answer != nil {
			if _, err := agent.Write(c.answer); err != nil {
				t.Fatal(err)
			}
		}
		agent.Close()
		if err := <-done; (err == nil) != c.ok {
			t.Errorf("%s: awaitLimits = %v, want ok %v", c.what, err, c.ok)
		}
	}
}

// The descriptor guest-init waits on is closed before the program
// starts, so that the program cannot talk to the agent on it.
func TestAwaitLimitsClosesItsEnd(t *testing.T) {
	agent, init, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	go func() {
		var b [1]byte
		agent.Read(b[:])
		agent.Write([]byte{limitedByte})
	}()
	if err := awaitLimits(init); err != nil {
		t.Fatal(err)
	}
	if _, err := init.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("guest-init's end after the handshake: %v, want closed", err)
	}
}
