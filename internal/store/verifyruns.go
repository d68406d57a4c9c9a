package store

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/corridor-dev/corridor/internal/api"
)

// Verify runs, under the prefix:
//
//	verifyruns/<app>/<time>-<rand>   api.VerifyRun, gzipped JSON
//
// The newest api.MaxVerifyRuns per app are kept. Gzip keeps a run of a few
// thousand checks (some hundred bytes each, very alike) well within etcd's
// request size limit (1.5 MiB by default).
const dirVerifyRuns = "verifyruns"

// maxVerifyRunBytes bounds one stored run, compressed.
const maxVerifyRunBytes = 1 << 20

// PutVerifyRun stores one verify run (its ID is set here) and trims the
// app's runs to the newest api.MaxVerifyRuns. It returns the run as stored.
func (s *Store) PutVerifyRun(ctx context.Context, run api.VerifyRun) (api.VerifyRun, error) {
	if run.Time.IsZero() {
		run.Time = time.Now().UTC()
	}
	run.ID = fmt.Sprintf("%020d-%s", run.Time.UnixNano(), randHex(4))
	b, err := json.Marshal(run)
	if err != nil {
		return run, fmt.Errorf("store: encode verify run: %w", err)
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	if _, err := zw.Write(b); err != nil {
		return run, err
	}
	if err := zw.Close(); err != nil {
		return run, err
	}
	if z.Len() > maxVerifyRunBytes {
		return run, fmt.Errorf("store: verify run of %s is %d bytes compressed, more than %d: run verify with fewer checks (--max-checks)", run.App, z.Len(), maxVerifyRunBytes)
	}
	dir := s.dir(dirVerifyRuns) + run.App + "/"
	if _, err := s.client.Put(ctx, dir+run.ID, z.String()); err != nil {
		return run, fmt.Errorf("store: write verify run: %w", err)
	}
	// Trim: keep the newest MaxVerifyRuns of this app.
	resp, err := s.client.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	if err != nil {
		s.log.Warn("list verify runs", "app", run.App, "err", err)
		return run, nil
	}
	for i := api.MaxVerifyRuns; i < len(resp.Kvs); i++ {
		if _, err := s.client.Delete(ctx, string(resp.Kvs[i].Key)); err != nil {
			s.log.Warn("trim verify runs", "app", run.App, "err", err)
		}
	}
	return run, nil
}

// VerifyRuns returns up to limit of app's newest runs, newest first (limit
// <= 0: all kept). Without withReport the reports are left out.
func (s *Store) VerifyRuns(ctx context.Context, app string, limit int, withReport bool) ([]api.VerifyRun, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(int64(limit)))
	}
	resp, err := s.client.Get(ctx, s.dir(dirVerifyRuns)+app+"/", opts...)
	if err != nil {
		return nil, fmt.Errorf("store: read verify runs of %s: %w", app, err)
	}
	out := make([]api.VerifyRun, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		run, err := decodeVerifyRun(kv.Value)
		if err != nil {
			s.log.Warn("stored verify run does not decode", "key", string(kv.Key), "err", err)
			continue
		}
		if !withReport {
			run.Report = nil
		}
		out = append(out, run)
	}
	return out, nil
}

// LastVerifyRuns returns the newest run of every app that has one, sorted
// by app (reports left out unless withReport).
func (s *Store) LastVerifyRuns(ctx context.Context, withReport bool) ([]api.VerifyRun, error) {
	resp, err := s.client.Get(ctx, s.dir(dirVerifyRuns), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("store: list verify runs: %w", err)
	}
	last := map[string]string{} // app -> newest key (keys sort by time)
	var apps []string
	for _, kv := range resp.Kvs {
		app, _, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), s.dir(dirVerifyRuns)), "/")
		if !ok {
			continue
		}
		if _, seen := last[app]; !seen {
			apps = append(apps, app)
		}
		last[app] = string(kv.Key)
	}
	out := make([]api.VerifyRun, 0, len(apps))
	for _, app := range apps {
		r, err := s.client.Get(ctx, last[app])
		if err != nil {
			return nil, fmt.Errorf("store: read verify run of %s: %w", app, err)
		}
		if len(r.Kvs) == 0 {
			continue // trimmed meanwhile
		}
		run, err := decodeVerifyRun(r.Kvs[0].Value)
		if err != nil {
			continue
		}
		if !withReport {
			run.Report = nil
		}
		out = append(out, run)
	}
	return out, nil
}

// DeleteVerifyRuns removes every stored run of app (the app was deleted).
func (s *Store) DeleteVerifyRuns(ctx context.Context, app string) error {
	if _, err := s.client.Delete(ctx, s.dir(dirVerifyRuns)+app+"/", clientv3.WithPrefix()); err != nil {
		return fmt.Errorf("store: delete verify runs of %s: %w", app, err)
	}
	return nil
}

func decodeVerifyRun(v []byte) (api.VerifyRun, error) {
	var run api.VerifyRun
	zr, err := gzip.NewReader(bytes.NewReader(v))
	if err != nil {
		return run, err
	}
	b, err := io.ReadAll(io.LimitReader(zr, 64<<20))
	if err != nil {
		return run, err
	}
	return run, json.Unmarshal(b, &run)
}
