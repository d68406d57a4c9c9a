package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/server"
	"github.com/corridor-dev/corridor/internal/spec"
	"github.com/corridor-dev/corridor/internal/store"
	"github.com/corridor-dev/corridor/internal/testnet"
)

// TestLeaderCrash runs three `corridor server` processes on a three-member
// etcd and SIGKILLs the one that leads the controller while a stream of
// applies goes to all three in turn: every apply a server acknowledged is
// found afterwards at its revision, another server takes the lead and
// places the apps applied after the crash, and an agent that follows a
// surviving server gets them in its desired state.
func TestLeaderCrash(t *testing.T) {
	got := runLeaderCrash(t)
	t.Logf("leader crash: new leader elected %s after the kill, first app applied after the kill placed %s after it; %d applies acknowledged, %d refused (to the killed server)",
		got.elected, got.placed, got.acked, got.failed)
}

// BenchmarkLeaderCrash measures the failover once per run.
func BenchmarkLeaderCrash(b *testing.B) {
	var elected, placed time.Duration
	for range b.N {
		got := runLeaderCrash(b)
		elected += got.elected
		placed += got.placed
	}
	b.ReportMetric(elected.Seconds()/float64(b.N), "s-to-new-leader")
	b.ReportMetric(placed.Seconds()/float64(b.N), "s-to-placed")
}

type leaderCrashResult struct {
	elected, placed time.Duration
	acked, failed   int
}

// crashServer is one `corridor server` process of the test.
type crashServer struct {
	url  string
	dir  string
	cmd  *exec.Cmd
	c    *api.Client
	done chan struct{}
}

func runLeaderCrash(t testing.TB) leaderCrashResult {
	bin := testnet.Binary(t, "server")
	endpoints := startEtcd(t, 3)
	prefix := fmt.Sprintf("/corridor-crash%d", os.Getpid())
	ports, err := store.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	servers := make([]*crashServer, 3)
	for i := range servers {
		s := &crashServer{url: fmt.Sprintf("https://127.0.0.1:%d", ports[i]), dir: filepath.Join(base, fmt.Sprintf("srv%d", i)), done: make(chan struct{})}
		logf, err := os.Create(filepath.Join(base, fmt.Sprintf("srv%d.log", i)))
		if err != nil {
			t.Fatal(err)
		}
		s.cmd = exec.Command(bin, "server", "--data-dir", s.dir, "--listen", strings.TrimPrefix(s.url, "https://"),
			"--etcd-endpoints", strings.Join(endpoints, ","), "--etcd-prefix", prefix, "--log-level", "debug")
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := s.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { s.cmd.Wait(); logf.Close(); close(s.done) }()
		t.Cleanup(func() {
			s.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(10 * time.Second):
				s.cmd.Process.Kill()
				<-s.done
			}
			if t.Failed() {
				b, _ := os.ReadFile(logf.Name())
				if len(b) > 4000 {
					b = b[len(b)-4000:]
				}
				t.Logf("---- %s (tail)\n%s", logf.Name(), b)
			}
		})
		servers[i] = s
	}
	// The first server to be ready wrote the shared secrets; every data
	// directory gets the admin token and CA.
	for i, s := range servers {
		deadline := time.Now().Add(60 * time.Second)
		for {
			c, err := serverClient(s)
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				err = c.Healthy(ctx)
				cancel()
				if err == nil {
					s.c = c
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("server %d not ready within 60s: %v", i, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	etc, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer etc.Close()
	leaderPID := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := etc.Get(ctx, prefix+"/leader/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))
		if err != nil || len(resp.Kvs) == 0 {
			return 0
		}
		id := string(resp.Kvs[0].Value) // host:pid, the server's default ID
		pid, _ := strconv.Atoi(id[strings.LastIndexByte(id, ':')+1:])
		return pid
	}
	var leader *crashServer
	deadline := time.Now().Add(30 * time.Second)
	for leader == nil {
		pid := leaderPID()
		for _, s := range servers {
			if s.cmd.Process.Pid == pid {
				leader = s
			}
		}
		if leader == nil && time.Now().After(deadline) {
			t.Fatal("no leader among the three servers within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var survivor *crashServer
	for _, s := range servers {
		if s != leader {
			survivor = s
		}
	}

	// One server joins (through a survivor) and reports, so that apps can
	// be placed; its client follows the survivor.
	agent := joinFake(t, survivor, "s1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			agent.ReportStatus(rctx, "s1", api.Status{Name: "s1"})
			rcancel()
			sleepCtx(ctx, 500*time.Millisecond)
		}
	}()

	// The stream: app crash<N>, applied to the servers in turn.
	type ack struct {
		name string
		rev  int64
		at   time.Time
	}
	var (
		mu     sync.Mutex
		acked  []ack
		failed int
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s := servers[i%3]
			name := fmt.Sprintf("crash%d", i)
			doc := fmt.Sprintf("apiVersion: corridor/v1\nkind: App\nname: %s\nclasses:\n  - name: c\n    tasks: 1\n    guest: {runtime: netns, command: [sleep, infinity]}\n    resources: {cpu: 10m, memory: 8Mi}\n", name)
			actx, acancel := context.WithTimeout(context.Background(), 5*time.Second)
			res, err := s.c.ApplyApp(actx, []byte(doc), api.ApplyOptions{File: name + ".yaml"})
			acancel()
			mu.Lock()
			if err == nil && len(res.Apps) == 1 {
				acked = append(acked, ack{name, res.Apps[0].Revision, time.Now()})
			} else {
				failed++
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	})
	ackCount := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	for ackCount() < 10 {
		time.Sleep(20 * time.Millisecond)
	}
	if err := leader.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-leader.done

	var res leaderCrashResult
	deadline = time.Now().Add(30 * time.Second)
	for {
		pid := leaderPID()
		if pid != 0 && pid != leader.cmd.Process.Pid {
			res.elected = time.Since(killed)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no new leader within 30s of the crash")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The first app acknowledged after the kill is placed by the new
	// leader, and reaches the agent through the survivor.
	var first ack
	deadline = time.Now().Add(30 * time.Second)
	for first.name == "" {
		mu.Lock()
		for _, a := range acked {
			if a.at.After(killed) {
				first = a
				break
			}
		}
		mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("no apply acknowledged after the crash")
		}
		time.Sleep(20 * time.Millisecond)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		tasks, err := survivor.c.ListTasks(context.Background(), api.Filter{App: first.name})
		if err == nil && len(tasks) == 1 && tasks[0].Server == "s1" {
			res.placed = time.Since(killed)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s, applied after the crash, not placed within 30s: %v %v", first.name, tasks, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Ten more acknowledged applies after that, then the stream stops.
	for more := ackCount() + 10; ackCount() < more && time.Since(killed) < 20*time.Second; {
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()

	// Every acknowledged apply is there, at its revision, and placed; the
	// agent's desired state (through the survivor) holds each one's task.
	mu.Lock()
	defer mu.Unlock()
	res.acked, res.failed = len(acked), failed
	apps, err := survivor.c.ListApps(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]int64{}
	for _, a := range apps {
		have[a.Name] = a.Revision
	}
	for _, a := range acked {
		if rev, ok := have[a.name]; !ok || rev != a.rev {
			t.Errorf("acknowledged apply of %s at revision %d lost: found %v (revision %d)", a.name, a.rev, ok, rev)
		}
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		ds, err := agent.Desired(context.Background(), "s1", 0, 0)
		missing := []string{}
		if err == nil {
			in := map[string]bool{}
			for _, g := range ds.State.Guests {
				in[g.App] = true
			}
			for _, a := range acked {
				if !in[a.name] {
					missing = append(missing, a.name)
				}
			}
		}
		if err == nil && len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent's desired state lacks acknowledged apps %v (%v)", missing, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return res
}

// serverClient is an admin client of s, from the token and CA in its
// data directory.
func serverClient(s *crashServer) (*api.Client, error) {
	tok, err := os.ReadFile(filepath.Join(s.dir, server.AdminTokenFile))
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(s.dir, server.CACertFile))
	if err != nil {
		return nil, err
	}
	pool, err := api.CAPool(ca)
	if err != nil {
		return nil, err
	}
	return api.NewClient(s.url, strings.TrimSpace(string(tok)), &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
}

// joinFake joins a server named name through s as an agent does (a CSR,
// the join token) and returns its mTLS client to s.
func joinFake(t testing.TB, s *crashServer, name string) *api.Client {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(filepath.Join(s.dir, server.JoinTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	wg := make([]byte, 32)
	rand.Read(wg)
	ca, err := os.ReadFile(filepath.Join(s.dir, server.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := api.CAPool(ca)
	if err != nil {
		t.Fatal(err)
	}
	anon, err := api.NewClient(s.url, "", &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.CloseIdleConnections()
	resp, err := anon.Join(context.Background(), api.JoinRequest{
		Name: name, Token: strings.TrimSpace(string(tok)),
		CSR:     string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
		Address: "198.18.250.11", Capacity: spec.Resources{CPU: 64000, Memory: 64 << 30},
		PublicKey: base64.StdEncoding.EncodeToString(wg), WireGuardPort: 51820,
	})
	if err != nil {
		t.Fatalf("join %s: %v", name, err)
	}
	tc, err := api.AgentTLS([]byte(resp.Certificate), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), []byte(resp.CA))
	if err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClient(s.url, "", tc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// startEtcd starts an n-member etcd in this process, on loopback ports of
// its own, and returns the client URLs.
func startEtcd(t testing.TB, n int) []string {
	t.Helper()
	ports, err := store.FreePorts(2 * n)
	if err != nil {
		t.Fatal(err)
	}
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	base := t.TempDir()
	var clients []string
	for i := range n {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(base, cfg.Name)
		cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i])}
		pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "corridor-crash-" + filepath.Base(base)
		cfg.ListenMetricsUrls = nil
		store.QuietLogger(cfg)
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			t.Fatalf("start etcd member %d: %v", i, err)
		}
		t.Cleanup(e.Close)
		clients = append(clients, cu.String())
		defer func() {
			select {
			case <-e.Server.ReadyNotify():
			case <-time.After(30 * time.Second):
				t.Errorf("etcd member %d not ready", i)
			}
		}()
	}
	return clients
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
