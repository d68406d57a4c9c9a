package lab

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func testOptions(t *testing.T) Options {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "corridor")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return Options{Dir: t.TempDir(), Binary: bin}
}

func TestOptionsDefaults(t *testing.T) {
	o, err := testOptions(t).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Servers != 3 || o.Prefix != "corlab-" || o.Underlay != DefaultUnderlay || o.MTU != 1500 || o.ServerPort != 7443 || o.AgentPort != 7444 {
		t.Errorf("defaults: %+v", o)
	}
	l := newLab(o)
	if l.UnderlayNamespace != "corlab-ul" || l.RootLink != "corlab0" || l.RootAddress != netip.MustParseAddr("198.18.0.1") {
		t.Errorf("names: ul %q root %q %s", l.UnderlayNamespace, l.RootLink, l.RootAddress)
	}
	if l.ServerURL != "https://198.18.0.1:7443" {
		t.Errorf("server URL %q", l.ServerURL)
	}
	want := []struct{ name, ns, addr, zone, wg, listen string }{
		{"s1", "corlab-s1", "198.18.0.11", "a", "corlabw1", "198.18.0.11:7444"},
		{"s2", "corlab-s2", "198.18.0.12", "b", "corlabw2", "198.18.0.12:7444"},
		{"s3", "corlab-s3", "198.18.0.13", "c", "corlabw3", "198.18.0.13:7444"},
	}
	if len(l.Servers) != len(want) {
		t.Fatalf("%d servers, want %d", len(l.Servers), len(want))
	}
	for i, w := range want {
		s := l.Servers[i]
		if s.Name != w.name || s.Namespace != w.ns || s.Address.String() != w.addr || s.Labels["zone"] != w.zone || s.WireGuardName != w.wg || s.Listen != w.listen {
			t.Errorf("server %d: %+v, want %+v", i, s, w)
		}
		if s.StateDir != filepath.Join(o.Dir, w.name) {
			t.Errorf("server %d state dir %q", i, s.StateDir)
		}
	}
}

func TestOptionsErrorsNameTheField(t *testing.T) {
	cases := []struct {
		edit func(*Options)
		want string
	}{
		{func(o *Options) { o.Servers = -1 }, "servers"},
		{func(o *Options) { o.Servers = 201 }, "servers"},
		{func(o *Options) { o.Prefix = "lab-" }, "prefix"},
		{func(o *Options) { o.Prefix = "corLab-" }, "prefix"},
		{func(o *Options) { o.Prefix = "corverylongprefix-" }, "too long"},
		{func(o *Options) { o.Underlay = netip.MustParsePrefix("fd00::/64") }, "underlay"},
		{func(o *Options) { o.Underlay = netip.MustParsePrefix("198.18.0.0/29") }, "underlay"},
		{func(o *Options) { o.Underlay = netip.MustParsePrefix("198.18.0.0/28"); o.Servers = 5 }, "no room"},
		{func(o *Options) { o.MTU = 100 }, "mtu"},
		{func(o *Options) { o.Binary = "/nonexistent/corridor" }, "binary"},
		{func(o *Options) { o.ServerPort = 70000 }, "server port"},
	}
	for _, c := range cases {
		o := testOptions(t)
		c.edit(&o)
		_, err := o.withDefaults()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one mentioning %q", o, err, c.want)
		}
	}
	// The largest subnet use that fits: /28 holds .11 to .14 below .15.
	o := testOptions(t)
	o.Underlay = netip.MustParsePrefix("198.18.0.0/28")
	o.Servers = 4
	if _, err := o.withDefaults(); err != nil {
		t.Errorf("4 servers in a /28: %v", err)
	}
}

func TestDerivedNamesFitTheKernel(t *testing.T) {
	p := "cort99999z-"
	if err := checkPrefix(p); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{rootLink(p), wireGuardName(p, 200), bridgePort(200), rootPeerName, bridgeName} {
		if len(n) > maxIfName {
			t.Errorf("%q is longer than %d", n, maxIfName)
		}
		if !strings.HasPrefix(n, "cor") {
			t.Errorf("%q lacks the cor prefix", n)
		}
	}
}

func TestSaveLoad(t *testing.T) {
	o, err := testOptions(t).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	l := newLab(o)
	if err := l.addNamespace(l.UnderlayNamespace); err != nil {
		t.Fatal(err)
	}
	// Recording twice does not duplicate.
	if err := l.addNamespace(l.UnderlayNamespace); err != nil {
		t.Fatal(err)
	}
	if err := l.addRootLink(l.RootLink); err != nil {
		t.Fatal(err)
	}
	l.Servers[0].Agent = &Process{Role: RoleAgent, Name: "s1", PID: 42, StartTime: 7, Args: []string{"corridor", "agent"}}
	if err := l.save(); err != nil {
		t.Fatal(err)
	}
	got, err := Load(o.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, l) {
		t.Errorf("loaded %+v\nsaved %+v", got, l)
	}
	if !reflect.DeepEqual(got.Namespaces, []string{"corlab-ul"}) {
		t.Errorf("namespaces %v", got.Namespaces)
	}
	if _, err := os.Stat(filepath.Join(o.Dir, StateFile+".tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(o.Dir, StateFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("lab.json mode %v", fi.Mode())
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir); !errors.Is(err, ErrNoLab) {
		t.Errorf("empty dir: %v, want ErrNoLab", err)
	}
	if err := os.WriteFile(filepath.Join(dir, StateFile), []byte("{\"version\": 1, \"dir\""), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || errors.Is(err, ErrNoLab) || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("damaged file: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, StateFile), []byte(`{"version": 99}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "version 99") {
		t.Errorf("future version: %v", err)
	}
}

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses, as a program may set it.
	line := "1234 (a (b) c) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 10000 100 18446744073709551615\n"
	state, ppid, start, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if state != 'S' || ppid != 77 || start != 987654 {
		t.Errorf("state %c ppid %d start %d", state, ppid, start)
	}
	if _, _, _, err := parseStat([]byte("1234 (x) S 1 2")); err == nil {
		t.Error("short line accepted")
	}
	if _, _, _, err := parseStat([]byte("garbage")); err == nil {
		t.Error("line without a command name accepted")
	}
}

func TestReadProcSelf(t *testing.T) {
	info, err := readProc("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if info.PPID != os.Getppid() || info.StartTime == 0 || info.NetNS == 0 || len(info.Args) == 0 {
		t.Errorf("self: %+v", info)
	}
	p := Process{PID: info.PID, StartTime: info.StartTime}
	if !sameProcess(p, info) {
		t.Error("self is not the same process as itself")
	}
	p.StartTime++
	if sameProcess(p, info) {
		t.Error("another start time is taken for the same process")
	}
	if _, err := readProc("/proc", 1<<30); err == nil {
		t.Error("a missing process read without error")
	}
}

func TestTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	var lines []string
	for i := 0; i < 30; i++ {
		lines = append(lines, "line "+string(rune('a'+i%26)))
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := tail(path, 3)
	if got != "    line b\n    line c\n    line d" {
		t.Errorf("tail: %q", got)
	}
	if !strings.Contains(tail(filepath.Join(t.TempDir(), "none"), 3), "no such file") {
		t.Error("missing file not reported")
	}
}
