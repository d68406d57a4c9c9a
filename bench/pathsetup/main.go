// Command pathsetup measures how long Corridor takes to make a new
// encrypted path usable, on a lab of network namespaces (needs root).
//
// Each run applies a fresh app (class src, one task; class dst, one task;
// rule src->dst encrypted) and times, from the apply call:
//
//   - first byte: a byte echoed back over TCP from the source guest's
//     network namespace to the destination task (a connect is tried every
//     20 ms, each with a 20 ms timeout, since a dropped SYN would otherwise
//     wait a second for its retransmission);
//   - verify: the end of the first `corridor verify` run (the same code,
//     in process) that passes, tried as soon as the first byte went through.
//
// Then it scales dst to 2 tasks (spread placement puts the new one on the
// third server, so the path needs a new WireGuard peer) and times the call
// to the first byte through the new path. Then it rotates the WireGuard key
// of dst/0's server and times the call to the new key reported and to the
// first byte src -> dst/0 under it. Then it deletes the app.
//
//	pathsetup --binary bin/corridor --runs 5
//
// The guests run this same program ("pathsetup echo").
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/corridor-dev/corridor/internal/hostns"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/lab"
	"github.com/corridor-dev/corridor/internal/verify"
)

const (
	echoPort = 5202
	pollStep = 20 * time.Millisecond
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	var err error
	if len(os.Args) > 1 && os.Args[1] == "echo" {
		err = echo(os.Args[2:])
	} else {
		err = bench(os.Args[1:], log)
	}
	if err != nil {
		log.Error("pathsetup failed", "err", err)
		os.Exit(1)
	}
}

// echo is the guests' program: a TCP echo server.
func echo(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	listen := fs.String("listen", fmt.Sprintf(":%d", echoPort), "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("echo: accept: %w", err)
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

type result struct {
	applyFirstByte, applyVerify, verifyRun, scaleFirstByte time.Duration
	// scaleNewPeer: dst/1 landed on a server that neither src nor dst/0
	// runs on, so src's host had to add a WireGuard peer for it (the only
	// case the "(new peer)" row may count).
	scaleNewPeer                    bool
	rotateReported, rotateFirstByte time.Duration
}

func bench(args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("pathsetup", flag.ContinueOnError)
	binary := fs.String("binary", "bin/corridor", "corridor executable the lab runs")
	runs := fs.Int("runs", 5, "number of runs")
	dir := fs.String("dir", "", "lab directory (default: a new temporary directory)")
	prefix := fs.String("prefix", "corps-", "lab prefix (namespaces, links)")
	underlay := fs.String("underlay", "198.18.201.0/24", "lab underlay subnet")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it makes a lab of network namespaces")
	}
	if *runs < 1 {
		return fmt.Errorf("--runs must be at least 1, got %d", *runs)
	}
	ul, err := netip.ParsePrefix(*underlay)
	if err != nil {
		return fmt.Errorf("--underlay: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	if *dir == "" {
		tmp, err := os.MkdirTemp("", "corridor-pathsetup")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		*dir = filepath.Join(tmp, "lab")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	log.Info("lab up", "servers", 3, "dir", *dir)
	l, err := lab.Up(ctx, lab.Options{Dir: *dir, Servers: 3, Prefix: *prefix, Underlay: ul, Binary: *binary, Logger: log})
	defer func() {
		if l == nil {
			return
		}
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := lab.Down(dctx, lab.DownOptions{Dir: l.Dir, Binary: *binary}); err != nil {
			log.Error("lab down failed", "err", err, "dir", l.Dir)
		}
	}()
	if err != nil {
		return fmt.Errorf("lab up: %w", err)
	}
	c, err := l.Client()
	if err != nil {
		return err
	}

	var res []result
	for i := 1; i <= *runs; i++ {
		r, err := oneRun(ctx, l, c, fmt.Sprintf("ps%d", i), self, log)
		if err != nil {
			return fmt.Errorf("run %d: %w", i, err)
		}
		log.Info("run done", "run", i, "apply-first-byte", r.applyFirstByte, "apply-verify", r.applyVerify,
			"verify-run", r.verifyRun, "scale-first-byte", r.scaleFirstByte,
			"rotate-reported", r.rotateReported, "rotate-first-byte", r.rotateFirstByte)
		res = append(res, r)
	}
	report(os.Stdout, res)
	return nil
}

func appDoc(name, self string) []byte {
	cls := func(n string) string {
		return fmt.Sprintf(`  - name: %s
    tasks: 1
    guest: {runtime: netns, command: [%q, echo, --listen, ":%d"]}
    resources: {cpu: 100m, memory: 64Mi}
    ports: [{port: %d}]
`, n, self, echoPort, echoPort)
	}
	return []byte(fmt.Sprintf("apiVersion: corridor/v1\nkind: App\nname: %s\nclasses:\n%s%srules:\n  - {from: src, to: dst, ports: [%d], encrypt: true}\n",
		name, cls("src"), cls("dst"), echoPort))
}

func oneRun(ctx context.Context, l *lab.Lab, c *api.Client, app, self string, log *slog.Logger) (result, error) {
	var r result
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		if err := c.DeleteApp(dctx, app); err != nil {
			log.Error("delete app", "app", app, "err", err)
		}
		waitGone(dctx, l, app)
	}()

	srcID, dstID := app+"/src/0", app+"/dst/0"
	start := time.Now()
	if _, err := c.ApplyApp(ctx, appDoc(app, self), api.ApplyOptions{File: app + ".yaml"}); err != nil {
		return r, fmt.Errorf("apply: %w", err)
	}
	dst, err := taskAddr(ctx, c, dstID)
	if err != nil {
		return r, err
	}
	if err := firstByte(ctx, func() string { return l.GuestNetns(srcID) }, netip.AddrPortFrom(dst, echoPort)); err != nil {
		return r, err
	}
	r.applyFirstByte = time.Since(start)

	for {
		vstart := time.Now()
		ok, err := verifyOnce(ctx, c, app)
		if err != nil {
			return r, err
		}
		if ok {
			r.applyVerify, r.verifyRun = time.Since(start), time.Since(vstart)
			break
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("verify never passed: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}

	start = time.Now()
	if _, err := c.Scale(ctx, app, "dst", 2); err != nil {
		return r, fmt.Errorf("scale: %w", err)
	}
	dst2, err := taskAddr(ctx, c, app+"/dst/1")
	if err != nil {
		return r, err
	}
	if err := firstByte(ctx, func() string { return l.GuestNetns(srcID) }, netip.AddrPortFrom(dst2, echoPort)); err != nil {
		return r, err
	}
	r.scaleFirstByte = time.Since(start)
	// The new task must be on a server that src's server had no peer
	// for, or the scale-up measured no new peer.
	tasks, err := c.ListTasks(ctx, api.Filter{})
	if err != nil {
		return r, err
	}
	servers := map[string]string{}
	for _, t := range tasks {
		servers[t.ID] = t.Server
	}
	if s := servers[app+"/dst/1"]; s == servers[srcID] || s == servers[dstID] || s == "" {
		log.Warn("scale-up reused a server: no new peer was needed; the run is left out of the (new peer) row", "src", servers[srcID], "dst0", servers[dstID], "dst1", s)
	} else {
		r.scaleNewPeer = true
	}

	// Key rotation of dst/0's server: its agent makes a new key (its old
	// sessions end there and then), reports it, and src's host gets it.
	// The first byte is sent once the new key is reported, so it can only
	// go through a session under the new key.
	start = time.Now()
	asked, err := c.RotateKey(ctx, servers[dstID])
	if err != nil {
		return r, fmt.Errorf("rotate-key: %w", err)
	}
	for {
		s, err := c.GetServer(ctx, servers[dstID])
		if err != nil {
			return r, err
		}
		if s.KeyGeneration >= asked.Spec.KeyGeneration {
			break
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("new key of %s never reported: %w", servers[dstID], ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	r.rotateReported = time.Since(start)
	if err := firstByte(ctx, func() string { return l.GuestNetns(srcID) }, netip.AddrPortFrom(dst, echoPort)); err != nil {
		return r, err
	}
	r.rotateFirstByte = time.Since(start)
	return r, nil
}

// taskAddr polls the task list until the task has an address.
func taskAddr(ctx context.Context, c *api.Client, id string) (netip.Addr, error) {
	for {
		tasks, err := c.ListTasks(ctx, api.Filter{})
		if err == nil {
			for _, t := range tasks {
				if t.ID == id && t.Address.IsValid() {
					return t.Address, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return netip.Addr{}, fmt.Errorf("task %s got no address: %w", id, ctx.Err())
		case <-time.After(pollStep):
		}
	}
}

// firstByte waits for the network namespace nsPath gives (the lab's
// GuestNetns: "" until a server holds the guest), then, from inside it,
// connects to to and echoes one byte, every pollStep until it works. It
// runs on a thread of its own that enters the namespace and is never
// given back (the runtime ends a locked thread when its goroutine ends).
func firstByte(ctx context.Context, ns func() string, to netip.AddrPort) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		var nsPath string
		for {
			if nsPath = ns(); nsPath != "" {
				break
			}
			select {
			case <-ctx.Done():
				done <- fmt.Errorf("guest namespace never appeared: %w", ctx.Err())
				return
			case <-time.After(pollStep):
			}
		}
		h, err := netns.GetFromPath(nsPath)
		if err != nil {
			done <- fmt.Errorf("open %s: %w", nsPath, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			done <- fmt.Errorf("enter %s: %w", nsPath, err)
			return
		}
		for {
			next := time.Now().Add(pollStep)
			if tryEcho(to) == nil {
				done <- nil
				return
			}
			select {
			case <-ctx.Done():
				done <- fmt.Errorf("no byte through %s from %s: %w", to, nsPath, ctx.Err())
				return
			case <-time.After(time.Until(next)):
			}
		}
	}()
	return <-done
}

// tryEcho connects, sends one byte and reads it back. Sockets are made on
// the calling thread, hence in its network namespace.
func tryEcho(to netip.AddrPort) error {
	conn, err := net.DialTimeout("tcp", to.String(), pollStep)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte{'x'}); err != nil {
		return err
	}
	_, err = io.ReadFull(conn, make([]byte, 1))
	return err
}

// verifyOnce runs the checks of `corridor verify APP` once. Only a run
// with every check run and matching counts (Report.OK): incomplete checks
// are never passes.
func verifyOnce(ctx context.Context, c *api.Client, app string) (bool, error) {
	rep, err := verify.RunFleet(ctx, c, app, verify.Options{})
	if err != nil {
		// A task not yet reported is an error of the run, not a failed
		// check: try again.
		return false, nil
	}
	return rep.OK(), nil
}

// waitGone waits until no guest namespace of app is left, so that the
// next run starts from a quiet fleet.
func waitGone(ctx context.Context, l *lab.Lab, app string) {
	// The lab's guests are cor-<lab prefix>sN.<app>-<class>-<index> (short
	// plain task IDs; guest.ScopedName with the server's GuestScope).
	for ctx.Err() == nil {
		left := false
		for _, n := range hostns.List() {
			if strings.HasPrefix(n, guest.NetnsPrefix+l.Prefix) && strings.Contains(n, guest.ScopeSep+app+"-") {
				left = true
			}
		}
		if !left {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func report(w io.Writer, res []result) {
	row := func(name string, get func(result) time.Duration, keep ...func(result) bool) {
		var ds []time.Duration
		var strs []string
		for _, r := range res {
			if len(keep) > 0 && !keep[0](r) {
				continue
			}
			ds = append(ds, get(r))
			strs = append(strs, fmt.Sprintf("%.2f", get(r).Seconds()))
		}
		if len(ds) == 0 {
			fmt.Fprintf(w, "| %s | - | - | no run qualified |\n", name)
			return
		}
		sorted := slices.Clone(ds)
		slices.Sort(sorted)
		if len(ds) != len(res) {
			name += fmt.Sprintf(" [%d of %d runs]", len(ds), len(res))
		}
		fmt.Fprintf(w, "| %s | **%.2f s** | %.2f-%.2f s | %s |\n", name, sorted[len(sorted)/2].Seconds(),
			sorted[0].Seconds(), sorted[len(sorted)-1].Seconds(), strings.Join(strs, ", "))
	}
	fmt.Fprintf(w, "| measure (%d runs) | median | range | runs in order |\n|---|---|---|---|\n", len(res))
	row("apply -> first byte through the new encrypted path", func(r result) time.Duration { return r.applyFirstByte })
	row("apply -> first passing verify (ends)", func(r result) time.Duration { return r.applyVerify })
	row("that verify run alone", func(r result) time.Duration { return r.verifyRun })
	newPeer := func(r result) bool { return r.scaleNewPeer }
	samePeer := func(r result) bool { return !r.scaleNewPeer }
	row("scale dst 1->2 -> first byte to the new task (new peer)", func(r result) time.Duration { return r.scaleFirstByte }, newPeer)
	row("scale dst 1->2 -> first byte to the new task (no new peer: dst/1 beside src or dst/0)", func(r result) time.Duration { return r.scaleFirstByte }, samePeer)
	row("rotate-key of dst/0's server -> new key reported", func(r result) time.Duration { return r.rotateReported })
	row("rotate-key -> first byte src -> dst/0 under the new key", func(r result) time.Duration { return r.rotateFirstByte })
}
