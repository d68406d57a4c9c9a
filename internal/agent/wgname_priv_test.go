package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/dataplane"
	"github.com/corridor-dev/corridor/internal/nsrun"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// A second agent on the machine whose --wg-name is served by a
// wireguard-go process in another network namespace is refused at start,
// told to pick its own --wg-name (driving the device through the shared
// UAPI socket would drive the other agent's); the agent whose own device
// serves the socket (a restart) is not. The name of the second device of
// a key rotation (name+"+") is checked the same way.
func TestWireGuardNameServedElsewhereIsRefused(t *testing.T) {
	testnet.NeedRoot(t, "a network namespace")
	name := fmt.Sprintf("corw-t%d", os.Getpid()%100000)
	sock := dataplane.UAPISocket(name)
	if err := os.MkdirAll("/var/run/wireguard", 0o755); err != nil {
		t.Fatal(err)
	}
	ns := testnet.Namespaces(t, "wn", "h")[0]
	var ln net.Listener
	// The "other agent": its device's socket served from namespace ns.
	if err := nsrun.Do(testnet.Path(ns), func() (err error) {
		ln, err = net.Listen("unix", sock)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	err := checkWireGuardName(name)
	if err == nil || !strings.Contains(err.Error(), "its own --wg-name") {
		t.Fatalf("check from another namespace = %v; want a refusal that suggests --wg-name", err)
	}
	var own error
	if err := nsrun.Do(testnet.Path(ns), func() error { own = checkWireGuardName(name); return nil }); err != nil {
		t.Fatal(err)
	}
	if own != nil {
		t.Fatalf("check from the namespace serving it = %v; want nil (its own device)", own)
	}
	if err := checkWireGuardName(name + "x"); err != nil {
		t.Fatalf("check of a free name = %v", err)
	}

	// The second device of a key rotation (name+"+") served from ns: an
	// agent whose own first device is free is refused all the same, since
	// its rotations would drive the other host's second device.
	other := name + "y"
	spare := dataplane.UAPISocket(dataplane.SpareName(other))
	var ln2 net.Listener
	if err := nsrun.Do(testnet.Path(ns), func() (err error) {
		ln2, err = net.Listen("unix", spare)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	go func() {
		for {
			c, err := ln2.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	err = checkWireGuardName(other)
	if err == nil || !strings.Contains(err.Error(), "second WireGuard device") || !errors.Is(dataplane.ServedElsewhere(dataplane.SpareName(other)), dataplane.ErrServedElsewhere) {
		t.Fatalf("check with the second device's socket served elsewhere = %v; want a refusal naming the second device", err)
	}
}
