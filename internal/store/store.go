// Package store keeps Corridor's control-plane state in etcd: apps,
// servers, placement, per-host desired state, agent status, events, CA
// material and tokens, all under one key prefix (/corridor by default).
//
// The etcd is either embedded (a single member in the data directory,
// listening only on 127.0.0.1) or an external cluster. Every change that
// depends on what was read is an etcd transaction comparing mod revisions,
// so that two servers, or two requests, never overwrite each other
// silently.
package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// DefaultPrefix is the key prefix of all of Corridor's keys.
const DefaultPrefix = "/corridor"

// Sentinel errors.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrConflict: the state changed between read and write; re-read and
	// try again, or report it (If-Match).
	ErrConflict = errors.New("store: conflict: the state changed since it was read")
	// ErrRevoked: the server was removed and may not come back under
	// that name.
	ErrRevoked = errors.New("store: server was removed")
)

// Config says which etcd to use.
type Config struct {
	// DataDir holds the embedded etcd (DataDir/etcd). Required for the
	// embedded mode; ignored when Endpoints is set.
	DataDir string
	// Endpoints of an external etcd cluster. Empty: embedded etcd.
	Endpoints []string
	// TLS files for an external cluster (all optional).
	CAFile, CertFile, KeyFile string
	// Prefix of every key; DefaultPrefix when empty. Several Corridor
	// deployments may share one etcd with distinct prefixes.
	Prefix string
	// MaxEvents bounds the event log (default 1000).
	MaxEvents int
	Logger    *slog.Logger
}

// Store is an open connection to Corridor's etcd.
type Store struct {
	client    *clientv3.Client
	etcd      *embed.Etcd // nil with an external cluster
	prefix    string
	maxEvents int
	log       *slog.Logger
	// written is the highest etcd revision of a write of the controller's
	// inputs or outputs made through this Store (apps, servers,
	// placement, desired states): a Mirror read waits until it holds it.
	written atomic.Int64
	// serversWritten is the highest revision of a server record written
	// through this Store (PutServer): Mirror.FreshServer waits for this
	// one alone, so that a stream of desired-state writes, which no agent
	// request depends on, does not send every agent request to etcd while
	// the mirror catches up with them.
	serversWritten atomic.Int64
	// statuses groups concurrent status writes (statusbatch.go).
	statuses statusBatch
}

// noteWrite records a write at revision rev (see written).
func (s *Store) noteWrite(rev int64) { raise(&s.written, rev) }

// raise sets v to rev unless it already holds a later revision.
func raise(v *atomic.Int64, rev int64) {
	for {
		cur := v.Load()
		if rev <= cur || v.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// Open connects to the external etcd of cfg, or starts the embedded one.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	cfg.Prefix = strings.TrimSuffix(cfg.Prefix, "/")
	if cfg.MaxEvents <= 0 {
		cfg.MaxEvents = 1000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Store{prefix: cfg.Prefix, maxEvents: cfg.MaxEvents, log: cfg.Logger}
	endpoints := cfg.Endpoints
	var tlsConf *tls.Config
	if len(endpoints) == 0 {
		if cfg.DataDir == "" {
			return nil, errors.New("store: neither a data directory nor etcd endpoints given")
		}
		e, err := startEmbedded(filepath.Join(cfg.DataDir, "etcd"))
		if err != nil {
			return nil, err
		}
		s.etcd = e
		endpoints = []string{e.Clients[0].Addr().String()}
	} else {
		var err error
		if tlsConf, err = clientTLS(cfg); err != nil {
			return nil, err
		}
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		TLS:         tlsConf,
		Logger:      zap.NewNop(),
		Context:     context.WithoutCancel(ctx),
		// Desired states of large fleets travel in one range read.
		MaxCallRecvMsgSize: 256 << 20,
		// An app's placement is one record: 10,000 tasks with their
		// placement reasons are about 12.5 MB. The client's default (2
		// MiB) refused it, and the controller then compiled and placed
		// every task afresh once a second without ever storing it.
		MaxCallSendMsgSize: maxRequestBytes,
	})
	if err != nil {
		s.closeEmbedded()
		return nil, fmt.Errorf("store: connect to etcd %v: %w", endpoints, err)
	}
	s.client = c
	// Fail now, with a clear message, rather than on the first request.
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Get(pctx, s.key("ping")); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: etcd %v does not answer: %w", endpoints, err)
	}
	return s, nil
}

// Close disconnects and stops the embedded etcd, if any.
func (s *Store) Close() error {
	var err error
	if s.client != nil {
		err = s.client.Close()
	}
	s.closeEmbedded()
	return err
}

func (s *Store) closeEmbedded() {
	if s.etcd != nil {
		s.etcd.Close()
		<-s.etcd.Server.StopNotify()
		s.etcd = nil
	}
}

// Client is the etcd client, for watches and elections.
func (s *Store) Client() *clientv3.Client { return s.client }

// Prefix is the key prefix (no trailing slash).
func (s *Store) Prefix() string { return s.prefix }

// Embedded reports whether the etcd runs inside this process.
func (s *Store) Embedded() bool { return s.etcd != nil }

func (s *Store) key(parts ...string) string {
	return s.prefix + "/" + strings.Join(parts, "/")
}

// startEmbedded starts a single-member etcd in dir, listening on two free
// loopback ports. Ports are chosen per start (tests run in parallel and
// nothing outside this process talks to the member); a lost race for a
// port is retried.
func startEmbedded(dir string) (*embed.Etcd, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: make etcd directory: %w", err)
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		cfg := embed.NewConfig()
		cfg.Name = "corridor"
		cfg.Dir = dir
		cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
		pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = cfg.Name + "=" + pu.String()
		cfg.ListenMetricsUrls = nil
		QuietLogger(cfg)
		// Large fleets write many desired states per transaction.
		cfg.MaxTxnOps = 1024
		cfg.MaxRequestBytes = maxRequestBytes
		cfg.AutoCompactionMode = "periodic"
		cfg.AutoCompactionRetention = "1h"
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			if strings.Contains(err.Error(), "address already in use") {
				continue
			}
			return nil, fmt.Errorf("store: start embedded etcd in %s: %w", dir, err)
		}
		select {
		case <-e.Server.ReadyNotify():
			return e, nil
		case err := <-e.Err():
			e.Close()
			return nil, fmt.Errorf("store: embedded etcd in %s: %w", dir, err)
		case <-time.After(60 * time.Second):
			e.Close()
			return nil, fmt.Errorf("store: embedded etcd in %s not ready after 60s", dir)
		}
	}
	return nil, fmt.Errorf("store: start embedded etcd in %s: %w", dir, lastErr)
}

// maxRequestBytes bounds one etcd request: the embedded etcd accepts it,
// and the client sends up to it (an external cluster has its own limit,
// 1.5 MiB unless --max-request-bytes raises it).
const maxRequestBytes = 16 << 20

// QuietLogger quiets etcd's own logger, which reports a normal shutdown
// at error level; Corridor logs what matters itself. Fatal errors still
// get through.
func QuietLogger(cfg *embed.Config) {
	// Not zap.NewNop: etcd's Fatal still exits the process, and a no-op
	// logger would make that exit silent (a full disk, or no file
	// descriptors left, would kill the server without a word). Only
	// DPanic, Panic and Fatal get through, to stderr.
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.Lock(os.Stderr), zapcore.DPanicLevel)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(core))
	cfg.Logger = "zap"
}

func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("store: find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// FreePorts returns n loopback ports free at the time of the call, for
// tests that start etcd members themselves.
func FreePorts(n int) ([]int, error) { return freePorts(n) }

func clientTLS(cfg Config) (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" && cfg.KeyFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("store: etcd CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("store: etcd CA %s: no PEM certificate in it", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("store: etcd client certificate and key must be given together")
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("store: etcd client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
