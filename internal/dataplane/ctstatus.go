package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"

	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ipsOffload is conntrack's IPS_OFFLOAD status bit (1 << 14): the
// connection is handled by an nftables flowtable.
const ipsOffload = 1 << 14

// ctnetlink values that golang.org/x/sys/unix does not define
// (linux/netfilter/nfnetlink_conntrack.h).
const (
	ipctnlMsgCtGet = 1  // IPCTNL_MSG_CT_GET
	ctaStatus      = 3  // CTA_STATUS, a big-endian u32
	ctaMark        = 8  // CTA_MARK
	ctaMarkMask    = 21 // CTA_MARK_MASK
)

// nfgenmsgLen is the length of the nfgenmsg header in front of every
// nfnetlink message's attributes.
const nfgenmsgLen = 4

// countConntrack dumps the conntrack table (IPv4 and IPv6) of the network
// namespace ns and returns how many entries have every bit of status set
// (status 0 counts every entry) and a ct mark that is mark under mask. The
// kernel filters by mark (a zero mask: no filter), so a busy host's other
// connections are never copied out. ns must be an open namespace handle:
// the netlink socket is made in it, whatever namespace the calling thread
// is in.
//
// The whole dump is in memory before it is counted (mdlayher/netlink
// gathers a multipart reply), a few hundred bytes per entry.
func countConntrack(ns netns.NsHandle, status, mark, mask uint32) (int, error) {
	c, err := mdnetlink.Dial(unix.NETLINK_NETFILTER, &mdnetlink.Config{NetNS: int(ns)})
	if err != nil {
		return 0, fmt.Errorf("dump conntrack: open netfilter netlink socket: %w", err)
	}
	defer c.Close()

	// AF_UNSPEC asks for every family at once: ctnetlink filters a dump
	// by family only when the request names one.
	req := mdnetlink.Message{
		Header: mdnetlink.Header{
			Type:  mdnetlink.HeaderType(unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtGet),
			Flags: mdnetlink.Request | mdnetlink.Dump,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}, // family, version, res_id (big endian)
	}
	if mask != 0 {
		attrs, err := mdnetlink.MarshalAttributes([]mdnetlink.Attribute{
			{Type: ctaMark, Data: binary.BigEndian.AppendUint32(nil, mark)},
			{Type: ctaMarkMask, Data: binary.BigEndian.AppendUint32(nil, mask)},
		})
		if err != nil {
			return 0, fmt.Errorf("dump conntrack: mark filter: %w", err)
		}
		req.Data = append(req.Data, attrs...)
	}
	msgs, err := c.Execute(req)
	if err != nil {
		return 0, fmt.Errorf("dump conntrack: %w", err)
	}
	n := 0
	for _, m := range msgs {
		st, err := ctStatus(m.Data)
		if err != nil {
			return 0, fmt.Errorf("dump conntrack: %w", err)
		}
		if st&status == status {
			n++
		}
	}
	return n, nil
}

// ctStatus returns the CTA_STATUS of one ctnetlink entry: data is the
// message's payload, the nfgenmsg header and then the attributes.
func ctStatus(data []byte) (uint32, error) {
	if len(data) < nfgenmsgLen {
		return 0, fmt.Errorf("conntrack entry of %d bytes, shorter than its nfgenmsg header", len(data))
	}
	ad, err := mdnetlink.NewAttributeDecoder(data[nfgenmsgLen:])
	if err != nil {
		return 0, fmt.Errorf("decode conntrack entry: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == ctaStatus {
			st := ad.Uint32()
			if err := ad.Err(); err != nil {
				return 0, fmt.Errorf("decode CTA_STATUS: %w", err)
			}
			return st, nil
		}
	}
	if err := ad.Err(); err != nil {
		return 0, fmt.Errorf("decode conntrack entry: %w", err)
	}
	// ctnetlink always sends CTA_STATUS: counting an entry without it as
	// status 0 would hide a misread message.
	return 0, errors.New("conntrack entry without CTA_STATUS")
}
