package nsguest

import (
	"context"
	"os"

	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/hostns"
	"github.com/corridor-dev/corridor/internal/spec"
)

// List implements guest.Runtime. It starts from the state directory, not
// from /run/netns or the cgroup tree: those are machine-wide, and in the
// lab several agents (one per simulated server) share them, so a cor-
// namespace without a record here belongs to someone else. Each recorded
// guest is then checked against the kernel (Info.Missing, Info.PID).
func (r *Runtime) List(ctx context.Context) ([]guest.Info, error) {
	recs, err := guest.Records(r.cfg.StateDir, guest.RecordFile, spec.RuntimeNetns)
	if err != nil {
		return nil, err
	}
	var out []guest.Info
	for _, rec := range recs {
		netns := guest.NetnsPrefix + rec.GuestName()
		in := guest.Info{Task: rec.Task, Runtime: rec.Runtime, Address: rec.Guest.Address, HostIf: rec.Guest.HostIf, Netns: netns}
		if pr, err := readPidFile(rec.Dir); err == nil && pr.Alive() {
			in.PID = pr.PID
		}
		if !hostns.Exists(netns) {
			in.Missing = append(in.Missing, "netns")
		}
		if _, err := r.host.Handle().LinkByName(rec.Guest.HostIf); err != nil {
			in.Missing = append(in.Missing, "link")
		}
		for _, d := range r.cgroups.Named(r.cfg.CgroupParent, rec.GuestName()).Dirs() {
			if _, err := os.Stat(d); err != nil {
				in.Missing = append(in.Missing, "cgroup")
				break
			}
		}
		out = append(out, in)
	}
	return out, nil
}
