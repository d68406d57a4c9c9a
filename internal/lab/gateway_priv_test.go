package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/corridor-dev/corridor/internal/hostns"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corridor-dev/corridor/examples"
	"github.com/corridor-dev/corridor/internal/settle"
	"github.com/corridor-dev/corridor/internal/testnet"
	"github.com/corridor-dev/corridor/internal/verify"
)

// TestGatewayCountsWhatEscapes: the servers' default gateway counts what
// reaches it for an outside address. Positive control first: a plain UDP
// packet a server sends to an outside address is counted. Then the sample
// app's cross-host "denied" checks run on a lab whose servers do have that
// default route: if a denied packet escaped the guards it would go out
// through the gateway and be counted, so they must not move the counter.
// `corridor lab status -o json` shows the same count.
func TestGatewayCountsWhatEscapes(t *testing.T) {
	needRoot(t)
	bin := testnet.Binary(t, "server", "agent")
	prefix, underlay := testPrefix(7), testUnderlay(7)
	dir := filepath.Join(t.TempDir(), "lab")
	cleanupPrefix(t, prefix, dir)
	ctx := context.Background()
	app := fmt.Sprintf("gw%d", os.Getpid())
	l, err := Up(ctx, Options{Dir: dir, Servers: 3, Prefix: prefix, Underlay: underlay, Binary: bin, Logger: testLogger(t), JoinTimeout: 60 * time.Second})
	t.Cleanup(func() {
		if l != nil {
			if err := Down(context.Background(), DownOptions{Dir: dir, Grace: 2 * time.Second, Logger: testLogger(t)}); err != nil {
				t.Errorf("lab down: %v", err)
			}
		}
		for _, ns := range listNamespaces() {
			if isLabGuest(ns, prefix, app) {
				t.Errorf("guest namespace %s left", ns)
				_ = hostns.Delete(ns)
			}
		}
	})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}

	gw := l.Gateway()
	if gw.Error != "" {
		t.Fatalf("gateway counter: %s", gw.Error)
	}
	if want := gatewayAddr(underlay).String(); gw.Address != want {
		t.Errorf("gateway address %s, want %s", gw.Address, want)
	}

	// Positive control: a server sends a plain packet to an outside
	// address; its default route takes it to the gateway, which counts it.
	s := l.Servers[0]
	// TEST-NET-2: outside every lab address (203.0.113.0/24 and
	// 192.0.2.0/24 are the outside client's networks, client.go).
	outside := "198.51.100.7:9"
	if err := hostns.Do(s.Namespace, func() error {
		c, err := net.Dial("udp4", outside)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("corridor gateway positive control"))
		return err
	}); err != nil {
		t.Fatalf("send from %s to %s: %v", s.Name, outside, err)
	}
	var control GatewayStatus
	deadline := time.Now().Add(15 * time.Second)
	for {
		control = l.Gateway()
		if control.Error != "" {
			t.Fatalf("gateway counter: %s", control.Error)
		}
		if control.Packets > gw.Packets {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("positive control: the gateway's counter (inet %s %s in %s) did not count the plain UDP packet %s sent to %s within 15s: %d packets before and after",
				GatewayTable, GatewayCounter, l.UnderlayNamespace, s.Name, outside, gw.Packets)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("positive control: %d -> %d packets", gw.Packets, control.Packets)

	// The sample app under a name of this test's own (guest namespaces
	// are named after the app).
	doc := bytes.Replace(examples.Shop, []byte("\nname: shop\n"), []byte("\nname: "+app+"\n"), 1)
	if bytes.Equal(doc, examples.Shop) {
		t.Fatal("examples/shop.yaml has no 'name: shop' line to rename")
	}
	c, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ApplyApp(ctx, doc); err != nil {
		t.Fatalf("apply: %v", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 90*time.Second)
	_, err = settle.Wait(wctx, c, settle.Options{Apps: []string{app}, Interval: 200 * time.Millisecond})
	wcancel()
	if err != nil {
		t.Fatalf("the app did not settle: %v", err)
	}
	vctx, vcancel := context.WithTimeout(ctx, 2*time.Minute)
	rep, err := verify.RunFleet(vctx, c, app, verify.Options{Timeout: 1500 * time.Millisecond})
	vcancel()
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	denied := 0
	for _, ch := range rep.Checks {
		if !ch.OK {
			t.Errorf("verify: %s -> %s %s/%d: expected %s, observed %s (%s)", ch.FromTask, ch.ToTask, ch.Protocol, ch.Port, ch.Expect, ch.Observed, ch.Detail)
		}
		if ch.Expect == verify.Denied && ch.FromServer != ch.ToServer {
			denied++
		}
	}
	if !rep.OK() {
		t.Fatalf("verify: %d passed, %d failed, %d incomplete", rep.Passed, rep.Failed, rep.Incomplete)
	}
	if denied == 0 {
		t.Fatalf("verify ran no cross-host denied check: %+v", rep.Checks)
	}

	after := l.Gateway()
	if after.Error != "" {
		t.Fatalf("gateway counter: %s", after.Error)
	}
	if after.Packets != control.Packets {
		t.Errorf("%d cross-host denied checks: the gateway counted %d packets for outside addresses during them (%d after the control, %d now): something escaped the guards and would have left in plain",
			denied, after.Packets-control.Packets, control.Packets, after.Packets)
	}
	t.Logf("%d cross-host denied checks, gateway at %d packets", denied, after.Packets)

	// corridor lab status shows the count.
	out, err := exec.Command(bin, "lab", "status", "--dir", dir, "-o", "json").Output()
	if err != nil {
		t.Fatalf("lab status: %v\n%s", err, out)
	}
	var st Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("lab status -o json printed %q: %v", out, err)
	}
	if st.Gateway.Error != "" || st.Gateway.Packets < after.Packets || st.Gateway.Address != gw.Address {
		t.Errorf("lab status -o json shows gateway %+v, want %s with at least %d packets", st.Gateway, gw.Address, after.Packets)
	}
	table, err := exec.Command(bin, "lab", "status", "--dir", dir).Output()
	if err != nil {
		t.Fatalf("lab status: %v\n%s", err, table)
	}
	if !strings.Contains(string(table), "gateway") || !strings.Contains(string(table), "dropped ") {
		t.Errorf("lab status does not show the gateway's count:\n%s", table)
	}
}
