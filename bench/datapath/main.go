// Command datapath is the helper of bench/datapath/run.sh: the program the
// benchmark's guests run (an iperf3 server beside a TCP echo server), and
// the TCP request/response loop that measures round-trip latency through a
// path. ICMP is not used because Corridor's firewall lets only the ports of
// a rule through, so one TCP tool measures every case alike.
//
//	datapath serve --iperf3-port 5201 --echo :5202
//	datapath rr --to 100.64.0.3:5202 --count 2000
//	datapath chart --results results.tsv -o datapath.svg
//
// chart draws run.sh's results (CHART=file.svg) as a bar chart.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"syscall"
	"time"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: datapath serve|rr|chart [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:], log)
	case "rr":
		err = rr(os.Args[2:])
	case "chart":
		err = chartCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q: want serve, rr or chart", os.Args[1])
	}
	if errors.Is(err, flag.ErrHelp) {
		return // -h: the flag set printed the usage
	}
	if err != nil {
		log.Error("datapath helper failed", "err", err)
		os.Exit(1)
	}
}

// serve runs iperf3 -s as a child (killed with us, so that a guest's
// teardown leaves no iperf3 behind in a deleted namespace) and a TCP echo
// server.
func serve(args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	port := fs.Int("iperf3-port", 5201, "port of the iperf3 server; 0: no iperf3")
	echo := fs.String("echo", ":5202", "listen address of the TCP echo server")
	if err := fs.Parse(args); err != nil {
		return err
	}
	errc := make(chan error, 2)
	var child *exec.Cmd
	if *port != 0 {
		child = exec.Command("iperf3", "-s", "-p", strconv.Itoa(*port))
		child.Stdout, child.Stderr = io.Discard, os.Stderr
		child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := child.Start(); err != nil {
			return fmt.Errorf("start iperf3: %w", err)
		}
		go func() { errc <- fmt.Errorf("iperf3 ended: %w", child.Wait()) }()
	}
	ln, err := net.Listen("tcp", *echo)
	if err != nil {
		return fmt.Errorf("echo: listen %s: %w", *echo, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				errc <- fmt.Errorf("echo: accept: %w", err)
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	log.Info("serving", "iperf3-port", *port, "echo", *echo)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		log.Info("stopping", "signal", s)
		if child != nil {
			_ = child.Process.Kill()
		}
		return nil
	case err := <-errc:
		if child != nil {
			_ = child.Process.Kill()
		}
		return err
	}
}

// rr sends one byte and waits for it back, count times over one TCP
// connection (Nagle off, Go's default), and prints the median, the 99th
// percentile and the minimum round trip in microseconds on one line:
// "rr_us median=.. p99=.. min=.. n=..".
func rr(args []string) error {
	fs := flag.NewFlagSet("rr", flag.ContinueOnError)
	to := fs.String("to", "", "address:port of an echo server (required)")
	count := fs.Int("count", 2000, "round trips to time")
	warmup := fs.Int("warmup", 50, "round trips before timing starts")
	timeout := fs.Duration("timeout", 5*time.Second, "connect timeout, and bound on each round trip")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *to == "" {
		return errors.New("rr: --to is required")
	}
	if *count < 1 {
		return fmt.Errorf("rr: --count must be at least 1, got %d", *count)
	}
	c, err := net.DialTimeout("tcp", *to, *timeout)
	if err != nil {
		return fmt.Errorf("rr: connect %s: %w", *to, err)
	}
	defer c.Close()
	buf := []byte{'x'}
	rtts := make([]time.Duration, 0, *count)
	for i := range *warmup + *count {
		if err := c.SetDeadline(time.Now().Add(*timeout)); err != nil {
			return err
		}
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			return fmt.Errorf("rr: write: %w", err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return fmt.Errorf("rr: read: %w", err)
		}
		if i >= *warmup {
			rtts = append(rtts, time.Since(start))
		}
	}
	slices.Sort(rtts)
	us := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e3, 'f', 1, 64) }
	fmt.Printf("rr_us median=%s p99=%s min=%s n=%d\n", us(rtts[len(rtts)/2]), us(rtts[len(rtts)*99/100]), us(rtts[0]), len(rtts))
	return nil
}
