package dataplane

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// flowtableProbeTable is the throwaway table ProbeFlowtables adds and
// removes (the "cor" prefix, like every kernel object of ours).
const flowtableProbeTable = "corftprobe"

// ProbeFlowtables reports whether the kernel of the data plane's namespace
// offers nftables flowtables (the inet flowtable type of
// nf_flow_table_inet), which could let established flows skip the
// forwarding path (issue 19). It adds, in one batch, a table holding an
// empty flowtable, and removes it again: a kernel without flowtables
// refuses the whole batch (ENOENT or EOPNOTSUPP), so nothing stays behind
// either way.
//
// The data plane only reports the answer (Apply logs it once): it does not
// offload flows even where the kernel can. An offloaded flow skips the
// forward chain for every later packet, and with it the fail-closed checks
// that chain makes on established connections too (a guest pair marked
// encrypted leaving by any device but the WireGuard one is dropped; a pair
// whose policy changed from plain to encrypted loses its plain flow at
// once). Using flowtables needs those checks made again at the flowtable's
// level and the flowtable emptied on every policy change; the kernel this
// was written on has no flowtables, so neither could be tested.
func (dp *Dataplane) ProbeFlowtables() (bool, error) {
	return probeFlowtables(dp.nft)
}

func probeFlowtables(c *nftables.Conn) (bool, error) {
	t := &nftables.Table{Name: flowtableProbeTable, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.AddFlowtable(&nftables.Flowtable{
		Table:    t,
		Name:     flowtableProbeTable,
		Hooknum:  nftables.FlowtableHookIngress,
		Priority: nftables.FlowtablePriorityFilter,
	})
	err := c.Flush()
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("dataplane: probe nftables flowtables: %w", err)
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return true, fmt.Errorf("dataplane: remove flowtable probe table %s: %w", flowtableProbeTable, err)
	}
	return true, nil
}

// noteFlowtables probes for flowtables on the first Apply of this process
// and logs the answer (with dp.mu held).
func (dp *Dataplane) noteFlowtables() {
	if dp.flowtablesProbed {
		return
	}
	dp.flowtablesProbed = true
	ok, err := dp.ProbeFlowtables()
	if err != nil {
		dp.log.Warn("could not tell whether the kernel has nftables flowtables", "err", err)
		return
	}
	dp.log.Info("nftables flowtables", "available", ok, "used", false,
		"why", "an offloaded flow would skip the forward chain's fail-closed checks (see dataplane.ProbeFlowtables)")
}
