package probe

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// A VM has no network namespace the host can enter, so its probes are run
// by a responder inside the guest (`corridor probe-responder`, started by
// the guest image's init when the image carries corridor) and asked for over
// a private virtio-serial port whose host end is a unix socket of the
// agent's. One JSON request per line, one JSON Result per line; the guest
// dials from its own eth0, so the packets take the real path: tap, host
// routing, firewall and tunnels.

// ChannelRequest is one probe asked of a guest's responder.
type ChannelRequest struct {
	Network string        `json:"network"`
	Addr    string        `json:"addr"`
	Marker  []byte        `json:"marker"`
	Timeout time.Duration `json:"timeout"`
}

// maxChannelLine bounds a request or answer line.
const maxChannelLine = 16 << 10

// Serve answers requests read from rw until it ends or ctx is done; each
// probe runs in the responder's own network namespace.
func Serve(ctx context.Context, rw io.ReadWriter) error {
	sc := bufio.NewScanner(rw)
	sc.Buffer(make([]byte, 4096), maxChannelLine)
	enc := json.NewEncoder(rw)
	for sc.Scan() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var req ChannelRequest
		var res Result
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			res = Result{Outcome: Failed, Err: "bad request: " + err.Error()}
		} else if res, err = Dial(ctx, "", req.Network, req.Addr, req.Marker, req.Timeout); err != nil {
			res.Outcome, res.Err = Failed, err.Error()
		}
		if err := enc.Encode(res); err != nil {
			return fmt.Errorf("probe responder: write: %w", err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("probe responder: read: %w", err)
	}
	return nil
}

// ErrNoResponder: nothing answered on the channel in time; the guest's
// image may have no responder.
var ErrNoResponder = errors.New("no probe responder answered in the guest")

// Remote runs one probe through the responder behind the unix socket at
// sock (the host end of a VM's probe port). It waits for the answer up to
// the probe's timeout plus grace.
func Remote(ctx context.Context, sock, network, addr string, marker []byte, timeout, grace time.Duration) (Result, error) {
	res := Result{Network: network, Addr: addr}
	if err := checkArgs(network, addr); err != nil {
		return res, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return res, fmt.Errorf("probe channel %s: %w", sock, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	c.SetDeadline(time.Now().Add(timeout + grace))
	b, err := json.Marshal(ChannelRequest{Network: network, Addr: addr, Marker: marker, Timeout: timeout})
	if err != nil {
		return res, err
	}
	if _, err := c.Write(append(b, '\n')); err != nil {
		return res, fmt.Errorf("probe channel %s: %w", sock, err)
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), maxChannelLine)
	if !sc.Scan() {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		var ne net.Error
		if err := sc.Err(); err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			return res, ErrNoResponder
		}
		return res, fmt.Errorf("probe channel %s: %w", sock, sc.Err())
	}
	if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
		return res, fmt.Errorf("probe channel %s: bad answer: %w", sock, err)
	}
	return res, nil
}
