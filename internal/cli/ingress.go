package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/verify"
)

// ingressChecks runs app's published-port checks from the lab's outside
// client and adds them to rep (nothing when the lab has no client).
func ingressChecks(ctx context.Context, c *api.Client, l *lab.Lab, rep *verify.Report, opt verify.Options) error {
	if l == nil || l.OutsideClient == nil {
		return nil
	}
	apps, err := c.ListApps(ctx)
	if err != nil {
		return err
	}
	infos, err := c.ListTasks(ctx, api.Filter{App: rep.App})
	if err != nil {
		return err
	}
	srvs, err := c.ListServers(ctx)
	if err != nil {
		return err
	}
	specs := make([]spec.App, len(apps))
	for i, a := range apps {
		specs[i] = a.Spec
	}
	tasks := make([]compile.Task, 0, len(infos))
	for _, t := range infos {
		tasks = append(tasks, t.Task)
	}
	servers := make([]spec.Server, len(srvs))
	for i, s := range srvs {
		servers[i] = s.Spec
		if s.State == spec.ServerDown {
			servers[i].State = spec.ServerDown
		}
	}
	rep.AddChecks(verify.IngressChecks(ctx, lab.VerifyClient{Lab: l}, rep.App, specs, tasks, servers, opt))
	return nil
}

// demoIngressRequest sends a curl-like request from the lab's outside
// client to the shop's web tier on port 80 of the first lab server, and
// prints it.
func demoIngressRequest(ctx context.Context, w io.Writer, l *lab.Lab) error {
	if l.OutsideClient == nil || len(l.Servers) == 0 {
		return fmt.Errorf("the lab has no outside client")
	}
	to := netip.AddrPortFrom(l.Servers[0].Address, 80)
	r, err := l.Request(ctx, lab.IngressRequest{From: l.OutsideClient.Allowed, To: to, Path: "/healthz",
		Marker: []byte("corridor-demo"), Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	if !r.Connected {
		return fmt.Errorf("GET http://%s/healthz from %s did not connect", to, l.OutsideClient.Allowed)
	}
	fmt.Fprintf(w, "\nfrom the outside client (namespace %s, address %s), to web on port 80 of server %s:\n",
		l.OutsideClient.Namespace, l.OutsideClient.Allowed, l.Servers[0].Name)
	fmt.Fprintf(w, "  $ curl -i --interface %s http://%s/healthz\n", l.OutsideClient.Allowed, to)
	fmt.Fprintf(w, "  %s\n", r.Status)
	var h struct {
		Self struct {
			Task string `json:"task"`
		} `json:"self"`
	}
	if json.Unmarshal([]byte(r.Body), &h) == nil && h.Self.Task != "" {
		fmt.Fprintf(w, "  %s  (answered by %s, in %s)\n", compactJSON(r.Body), h.Self.Task, r.RTT.Round(time.Millisecond))
	} else {
		fmt.Fprintf(w, "  %s\n", compactJSON(r.Body))
	}
	return nil
}

func compactJSON(s string) string {
	var v any
	if json.Unmarshal([]byte(s), &v) != nil {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}
