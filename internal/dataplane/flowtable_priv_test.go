package dataplane

import (
	"os/exec"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/corridor-dev/corridor/internal/testnet"
)

// TestProbeFlowtables: the probe's answer is the kernel's (told apart by
// nft(8) making a flowtable itself, in a second namespace), and the probe
// leaves no table behind, whatever the answer.
func TestProbeFlowtables(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft(8) to ask the kernel independently")
	}
	names := testnet.Namespaces(t, "ft", "probe", "cli")
	ns, err := netns.GetFromName(names[0])
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := probeFlowtables(c)
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	if _, err := probeFlowtables(c); err != nil {
		t.Fatalf("second probe (the first must have cleaned up): %v", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(tables, func(tb *nftables.Table) bool { return tb.Name == flowtableProbeTable }); i >= 0 {
		t.Errorf("the probe left table %s behind", flowtableProbeTable)
	}

	cli := func(args ...string) error {
		return exec.Command("ip", append([]string{"netns", "exec", names[1], "nft"}, args...)...).Run()
	}
	if err := cli("add", "table", "inet", "t"); err != nil {
		t.Fatalf("nft add table: %v", err)
	}
	want := cli("add", "flowtable", "inet", "t", "f", "{ hook ingress priority 0; }") == nil
	if got != want {
		t.Errorf("ProbeFlowtables = %v, but nft(8) %s make a flowtable", got, map[bool]string{true: "could", false: "could not"}[want])
	}
	t.Logf("this kernel has nftables flowtables: %v", got)
}
