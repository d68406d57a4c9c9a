package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/hoststate"
	"github.com/corridor-dev/corridor/internal/spec"
)

// Key layout, under the prefix:
//
//	apps/<name>            AppRecord
//	servers/<name>         ServerRecord
//	placement/<app>        AppPlacement (the compiler's tasks and paths)
//	hosts/<name>/desired   hoststate.State; its mod revision is the
//	                       hoststate.Desired.Revision agents long-poll on
//	hosts/<name>/status    StatusRecord (agent heartbeat)
//	events/<time>-<rand>   api.Event (bounded)
//	secrets/<name>         CA material and tokens
//	leader/                controller election
const (
	dirApps      = "apps"
	dirServers   = "servers"
	dirPlacement = "placement"
	dirHosts     = "hosts"
	dirEvents    = "events"
	dirSecrets   = "secrets"
	dirLeader    = "leader"

	suffixDesired = "desired"
	suffixStatus  = "status"
)

// maxOpsPerTxn keeps every transaction within etcd's default limit of 128
// operations, so that an external cluster with stock settings works.
const maxOpsPerTxn = 100

// MaxOpsPerTxn is the most puts and deletes one transaction of this
// package carries.
const MaxOpsPerTxn = maxOpsPerTxn

// AppRecord is a stored app.
type AppRecord struct {
	App spec.App `json:"app"`
	// Source is the YAML the app was applied with, for display. Changes
	// made later through the API (scale) are listed in Notes.
	Source    string    `json:"source,omitempty"`
	Notes     []string  `json:"notes,omitempty"`
	UpdatedBy string    `json:"updatedBy"`
	UpdatedAt time.Time `json:"updatedAt"`
	// Revision is the record's etcd mod revision (the If-Match value).
	Revision int64 `json:"-"`
}

// ServerRecord is a stored server.
type ServerRecord struct {
	Server     spec.Server `json:"server"`
	JoinedAt   time.Time   `json:"joinedAt"`
	CertSerial string      `json:"certSerial,omitempty"`
	// PrevCertSerial is the certificate a renewal replaced: still accepted
	// until it expires, so that an agent that lost the renewal's answer,
	// or whose connections opened before it, is not locked out. A join
	// clears it (a reinstalled host supersedes both).
	PrevCertSerial string    `json:"prevCertSerial,omitempty"`
	Revoked        bool      `json:"revoked,omitempty"`
	RevokedAt      time.Time `json:"revokedAt,omitzero"`
	RevokedBy      string    `json:"revokedBy,omitempty"`
	// KeyChangedAt is when the server's WireGuard public key last changed
	// after its join (a rotation); zero: it has the key it joined with.
	KeyChangedAt time.Time `json:"keyChangedAt,omitzero"`
	Revision     int64     `json:"-"`
}

// KeySince is when the server's current WireGuard key came into use, as
// far as the control plane knows: its last key change, else its join.
func (r ServerRecord) KeySince() time.Time {
	if r.KeyChangedAt.After(r.JoinedAt) {
		return r.KeyChangedAt
	}
	return r.JoinedAt
}

// AppPlacement is the compiler's decision for one app.
type AppPlacement struct {
	App     string         `json:"app"`
	Network netip.Prefix   `json:"network"`
	Tasks   []compile.Task `json:"tasks"`
	// Paths are the app's paths, one list in JSON; as the controller
	// writes it, derived from the plan while it is encoded.
	Paths compile.AppPaths `json:"paths"`
	// Pending are the app's tasks no server could take at the last
	// compile (compile.Plan.Pending): no server, an address kept.
	Pending  []compile.Task `json:"pending,omitempty"`
	Revision int64          `json:"-"`
}

// Encode is the record as etcd keeps it. Paths a compile made are written
// in their path-set form ("pathSet", compile.PathSet: each class's tasks
// and the rules between classes, linear in the tasks), with "paths" left
// an empty list: a rule between two classes of 500 tasks is 250,000 paths,
// 62 MB as a list, more than etcd takes in one request. (A server of an
// earlier version reads such a record as one without paths.) Paths read
// from a flat list (an earlier record) are written as they came, and the
// record is then json.Marshal(p) byte for byte (TestPlacementEncode).
func (p AppPlacement) Encode() ([]byte, error) {
	if p.Paths.Compact() {
		set, err := json.Marshal(compile.PathSet{Paths: p.Paths})
		if err != nil {
			return nil, err
		}
		flat := p
		flat.Paths = compile.AppPaths{}
		b, err := flat.encode(0)
		if err != nil {
			return nil, err
		}
		b = b[:len(b)-1]
		return append(append(append(b, `,"pathSet":`...), set...), '}'), nil
	}
	return p.encode(p.Paths.Len())
}

// UnmarshalJSON reads a record of either form (Encode).
func (p *AppPlacement) UnmarshalJSON(b []byte) error {
	type plain AppPlacement // without this method
	var x struct {
		plain
		PathSet *compile.PathSet `json:"pathSet"`
	}
	if err := json.Unmarshal(b, &x); err != nil {
		return err
	}
	*p = AppPlacement(x.plain)
	if x.PathSet != nil {
		p.Paths = x.PathSet.Paths
	}
	return nil
}

// encode is json.Marshal(p), made faster: the paths are written by their
// own encoder and not checked again by encoding/json. n sizes the buffer.
func (p AppPlacement) encode(n int) ([]byte, error) {
	b := make([]byte, 0, 256+200*len(p.Tasks)+280*n)
	b = append(b, `{"app":`...)
	for _, f := range []struct {
		sep string
		v   any
	}{{"", p.App}, {`,"network":`, p.Network}, {`,"tasks":`, p.Tasks}} {
		js, err := json.Marshal(f.v)
		if err != nil {
			return nil, err
		}
		b = append(append(b, f.sep...), js...)
	}
	b = append(b, `,"paths":`...)
	b = p.Paths.AppendJSON(b)
	if len(p.Pending) > 0 {
		js, err := json.Marshal(p.Pending)
		if err != nil {
			return nil, err
		}
		b = append(append(b, `,"pending":`...), js...)
	}
	return append(b, '}'), nil
}

// StatusRecord is an agent's last report and when the server got it.
type StatusRecord struct {
	Status   api.Status `json:"status"`
	Received time.Time  `json:"received"`
	Revision int64      `json:"-"`
}

// Snapshot is a consistent read of apps, servers and placement at one
// etcd revision.
type Snapshot struct {
	Revision  int64
	Apps      []AppRecord    // sorted by name
	Servers   []ServerRecord // sorted by name
	Placement []AppPlacement // sorted by app
}

// Assignments is the current placement reduced to the compiler's input;
// pending tasks have no Server.
func (sn *Snapshot) Assignments() []compile.Assignment {
	var out []compile.Assignment
	for _, p := range sn.Placement {
		for _, t := range p.Tasks {
			out = append(out, compile.Assignment{Task: t.ID, Server: t.Server, Address: t.Address})
		}
		for _, t := range p.Pending {
			// No server: the compiler places it again, at its address.
			out = append(out, compile.Assignment{Task: t.ID, Address: t.Address})
		}
	}
	return out
}

// Networks is the app networks allocated so far.
func (sn *Snapshot) Networks() map[string]netip.Prefix {
	out := make(map[string]netip.Prefix, len(sn.Placement))
	for _, p := range sn.Placement {
		if p.Network.IsValid() {
			out[p.App] = p.Network
		}
	}
	return out
}

// App finds an app by name.
func (sn *Snapshot) App(name string) (AppRecord, bool) {
	for _, a := range sn.Apps {
		if a.App.Name == name {
			return a, true
		}
	}
	return AppRecord{}, false
}

// Snapshot reads apps, servers and placement in one transaction.
func (s *Store) Snapshot(ctx context.Context) (*Snapshot, error) {
	resp, err := s.client.Txn(ctx).Then(
		clientv3.OpGet(s.dir(dirApps), clientv3.WithPrefix()),
		clientv3.OpGet(s.dir(dirServers), clientv3.WithPrefix()),
		clientv3.OpGet(s.dir(dirPlacement), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("store: read state: %w", err)
	}
	sn := &Snapshot{Revision: resp.Header.Revision}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		var r AppRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("store: corrupt app record %s: %w", kv.Key, err)
		}
		r.Revision = kv.ModRevision
		sn.Apps = append(sn.Apps, r)
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var r ServerRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("store: corrupt server record %s: %w", kv.Key, err)
		}
		r.Revision = kv.ModRevision
		sn.Servers = append(sn.Servers, r)
	}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		var r AppPlacement
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("store: corrupt placement %s: %w", kv.Key, err)
		}
		r.Revision = kv.ModRevision
		sn.Placement = append(sn.Placement, r)
	}
	// etcd returns keys sorted, so these are sorted by name already.
	return sn, nil
}

func (s *Store) dir(d string) string { return s.prefix + "/" + d + "/" }

// CommitApps writes and deletes apps, and records ev, if neither apps nor
// servers changed since sn was read (a new, changed or re-created key
// under either has a mod revision above sn.Revision). Otherwise it
// returns ErrConflict and writes nothing: the caller re-reads, re-checks
// and tries again. This makes applies serializable: each was validated
// and dry-run compiled against exactly the state it lands on.
func (s *Store) CommitApps(ctx context.Context, sn *Snapshot, puts []AppRecord, deletes []string, ev api.Event) (int64, error) {
	ops := make([]clientv3.Op, 0, len(puts)+len(deletes)+1)
	for _, r := range puts {
		b, err := json.Marshal(r)
		if err != nil {
			return 0, fmt.Errorf("store: encode app %s: %w", r.App.Name, err)
		}
		ops = append(ops, clientv3.OpPut(s.key(dirApps, r.App.Name), string(b)))
	}
	for _, name := range deletes {
		ops = append(ops, clientv3.OpDelete(s.key(dirApps, name)))
	}
	evOp, err := s.eventOp(ev)
	if err != nil {
		return 0, err
	}
	ops = append(ops, evOp)
	resp, err := s.client.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(s.dir(dirApps)), "<", sn.Revision+1).WithPrefix(),
		clientv3.Compare(clientv3.ModRevision(s.dir(dirServers)), "<", sn.Revision+1).WithPrefix(),
	).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("store: write apps: %w", err)
	}
	if !resp.Succeeded {
		return 0, ErrConflict
	}
	s.noteWrite(resp.Header.Revision)
	s.trimEvents(ctx)
	return resp.Header.Revision, nil
}

// GetServer reads one server.
func (s *Store) GetServer(ctx context.Context, name string) (*ServerRecord, error) {
	resp, err := s.client.Get(ctx, s.key(dirServers, name))
	if err != nil {
		return nil, fmt.Errorf("store: read server %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, ErrNotFound
	}
	var r ServerRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		return nil, fmt.Errorf("store: corrupt server record %s: %w", name, err)
	}
	r.Revision = resp.Kvs[0].ModRevision
	return &r, nil
}

// PutServer writes a server if its record is still at revision expect (0:
// it must not exist), and records ev when given. ErrConflict otherwise.
func (s *Store) PutServer(ctx context.Context, r ServerRecord, expect int64, ev *api.Event) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: encode server %s: %w", r.Server.Name, err)
	}
	k := s.key(dirServers, r.Server.Name)
	ops := []clientv3.Op{clientv3.OpPut(k, string(b))}
	if ev != nil {
		op, err := s.eventOp(*ev)
		if err != nil {
			return err
		}
		ops = append(ops, op)
	}
	if r.Revoked {
		// A removed server's desired state is no one's business any more.
		ops = append(ops, clientv3.OpDelete(s.hostKey(r.Server.Name, suffixDesired)))
	}
	resp, err := s.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", expect)).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("store: write server %s: %w", r.Server.Name, err)
	}
	if !resp.Succeeded {
		return ErrConflict
	}
	raise(&s.serversWritten, resp.Header.Revision)
	s.noteWrite(resp.Header.Revision)
	if ev != nil {
		s.trimEvents(ctx)
	}
	return nil
}

// UpdateServer applies fn to a server's record in a read-modify-write
// loop. fn returns false to leave the record unchanged.
func (s *Store) UpdateServer(ctx context.Context, name string, fn func(*ServerRecord) (bool, error), ev *api.Event) (*ServerRecord, error) {
	for {
		r, err := s.GetServer(ctx, name)
		if err != nil {
			return nil, err
		}
		changed, err := fn(r)
		if err != nil || !changed {
			return r, err
		}
		err = s.PutServer(ctx, *r, r.Revision, ev)
		if errors.Is(err, ErrConflict) {
			continue
		}
		return r, err
	}
}

func (s *Store) hostKey(host, what string) string { return s.key(dirHosts, host, what) }

// HostsPrefix is the prefix of the per-host keys (desired and status).
func (s *Store) HostsPrefix() string { return s.dir(dirHosts) }

// ParseHostKey splits a per-host key into host name and kind
// ("desired" or "status").
func (s *Store) ParseHostKey(key string) (host, kind string, ok bool) {
	rest, found := strings.CutPrefix(key, s.dir(dirHosts))
	if !found {
		return "", "", false
	}
	host, kind, found = strings.Cut(rest, "/")
	if !found || host == "" {
		return "", "", false
	}
	return host, kind, kind == suffixDesired || kind == suffixStatus
}

// IsDesired and IsStatus name the kinds ParseHostKey returns.
func IsDesired(kind string) bool { return kind == suffixDesired }

// IsStatus reports whether kind is the status kind of ParseHostKey.
func IsStatus(kind string) bool { return kind == suffixStatus }

// AppsPrefix and ServersPrefix are watched by the controller.
func (s *Store) AppsPrefix() string { return s.dir(dirApps) }

// ServersPrefix is the prefix of server records.
func (s *Store) ServersPrefix() string { return s.dir(dirServers) }

// LeaderPrefix is the election prefix of the controller.
func (s *Store) LeaderPrefix() string { return s.dir(dirLeader) }

// PutStatus stores an agent's report. It returns once the report is in
// etcd; concurrent reports share transactions.
func (s *Store) PutStatus(ctx context.Context, r StatusRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: encode status: %w", err)
	}
	// Written together with the reports of other agents that arrive
	// meanwhile (statusbatch.go).
	if err := s.putStatusBatched(ctx, s.hostKey(r.Status.Name, suffixStatus), string(b)); err != nil {
		return fmt.Errorf("store: write status of %s: %w", r.Status.Name, err)
	}
	return nil
}

// Statuses reads every agent's last report, by host.
// StatusOf reads one host's last status; nil when it has reported none.
func (s *Store) StatusOf(ctx context.Context, host string) (*StatusRecord, error) {
	resp, err := s.client.Get(ctx, s.hostKey(host, suffixStatus))
	if err != nil {
		return nil, fmt.Errorf("store: read the status of %s: %w", host, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var r StatusRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		return nil, fmt.Errorf("store: decode the status of %s: %w", host, err)
	}
	r.Revision = resp.Kvs[0].ModRevision
	return &r, nil
}

func (s *Store) Statuses(ctx context.Context) (map[string]StatusRecord, error) {
	hosts, err := s.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]StatusRecord, len(hosts))
	for name, h := range hosts {
		if h.Status != nil {
			out[name] = *h.Status
		}
	}
	return out, nil
}

// HostKeys is what etcd holds for one host.
type HostKeys struct {
	Desired         []byte // raw hoststate.State JSON, nil if none
	DesiredRevision int64
	Status          *StatusRecord
}

// Hosts reads every host's desired state and status in one range.
func (s *Store) Hosts(ctx context.Context) (map[string]*HostKeys, error) {
	resp, err := s.client.Get(ctx, s.dir(dirHosts), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("store: read hosts: %w", err)
	}
	out := map[string]*HostKeys{}
	for _, kv := range resp.Kvs {
		host, kind, ok := s.ParseHostKey(string(kv.Key))
		if !ok {
			continue
		}
		h := out[host]
		if h == nil {
			h = &HostKeys{}
			out[host] = h
		}
		if kind == suffixDesired {
			h.Desired, h.DesiredRevision = kv.Value, kv.ModRevision
			continue
		}
		var r StatusRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			s.log.Warn("corrupt status record", "host", host, "err", err)
			continue
		}
		r.Revision = kv.ModRevision
		h.Status = &r
	}
	return out, nil
}

// GetDesired reads one host's desired state. A host without one yet has
// revision 0 and an empty state.
func (s *Store) GetDesired(ctx context.Context, host string) (hoststate.Desired, error) {
	resp, err := s.client.Get(ctx, s.hostKey(host, suffixDesired))
	if err != nil {
		return hoststate.Desired{}, fmt.Errorf("store: read desired state of %s: %w", host, err)
	}
	if len(resp.Kvs) == 0 {
		return hoststate.Desired{State: hoststate.Empty(host)}, nil
	}
	ds := hoststate.Desired{State: hoststate.State{Host: host}}
	if err := json.Unmarshal(resp.Kvs[0].Value, &ds.State); err != nil {
		return ds, fmt.Errorf("store: corrupt desired state of %s: %w", host, err)
	}
	ds.Revision = resp.Kvs[0].ModRevision
	return ds, nil
}

// DesiredWrite is one host's new desired state. Prev is the mod revision
// it replaces (0: none); a write whose key moved on is a conflict.
type DesiredWrite struct {
	Host string
	Data []byte // nil: delete
	Prev int64
}

// WriteDesired writes desired states in transactions of at most
// maxOpsPerTxn operations, each guarded by guard (the controller's
// leadership) and by every key's previous revision. It returns how many
// keys it wrote before an error.
func (s *Store) WriteDesired(ctx context.Context, guard []clientv3.Cmp, writes []DesiredWrite) (int, error) {
	done := 0
	for start := 0; start < len(writes); start += maxOpsPerTxn / 2 {
		end := min(start+maxOpsPerTxn/2, len(writes))
		cmps := append([]clientv3.Cmp(nil), guard...)
		var ops []clientv3.Op
		for _, w := range writes[start:end] {
			k := s.hostKey(w.Host, suffixDesired)
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", w.Prev))
			if w.Data == nil {
				ops = append(ops, clientv3.OpDelete(k))
			} else {
				ops = append(ops, clientv3.OpPut(k, string(w.Data)))
			}
		}
		resp, err := s.client.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return done, fmt.Errorf("store: write desired states: %w", err)
		}
		if !resp.Succeeded {
			return done, ErrConflict
		}
		s.noteWrite(resp.Header.Revision)
		done += end - start
	}
	return done, nil
}

// WritePlacement writes and deletes app placements, guarded like
// WriteDesired.
func (s *Store) WritePlacement(ctx context.Context, guard []clientv3.Cmp, puts []AppPlacement, deletes []string) error {
	enc := make([]EncodedPlacement, 0, len(puts))
	for _, p := range puts {
		b, err := p.Encode()
		if err != nil {
			return fmt.Errorf("store: encode placement of %s: %w", p.App, err)
		}
		enc = append(enc, EncodedPlacement{App: p.App, Data: b})
	}
	_, err := s.WriteEncodedPlacement(ctx, guard, enc, deletes)
	return err
}

// EncodedPlacement is an app's AppPlacement as JSON (json.Marshal's).
type EncodedPlacement struct {
	App  string
	Data []byte
}

// WriteEncodedPlacement is WritePlacement for placements the caller
// encoded already (the controller encodes each app's placement once, to
// compare it with the stored one). It returns the revision of the last
// transaction, which is each written record's mod revision when one
// transaction took them all (up to maxOpsPerTxn puts and deletes).
func (s *Store) WriteEncodedPlacement(ctx context.Context, guard []clientv3.Cmp, puts []EncodedPlacement, deletes []string) (int64, error) {
	var ops []clientv3.Op
	for _, p := range puts {
		ops = append(ops, clientv3.OpPut(s.key(dirPlacement, p.App), string(p.Data)))
	}
	for _, a := range deletes {
		ops = append(ops, clientv3.OpDelete(s.key(dirPlacement, a)))
	}
	var rev int64
	for start := 0; start < len(ops); start += maxOpsPerTxn {
		end := min(start+maxOpsPerTxn, len(ops))
		resp, err := s.client.Txn(ctx).If(guard...).Then(ops[start:end]...).Commit()
		if err != nil {
			return rev, fmt.Errorf("store: write placement: %w", err)
		}
		if !resp.Succeeded {
			return rev, ErrConflict
		}
		rev = resp.Header.Revision
		s.noteWrite(rev)
	}
	return rev, nil
}

// EnsureSecret returns the secret called name, making it with gen if no
// server made it yet. Concurrent first starts agree on one value.
func (s *Store) EnsureSecret(ctx context.Context, name string, gen func() ([]byte, error)) ([]byte, error) {
	k := s.key(dirSecrets, name)
	resp, err := s.client.Get(ctx, k)
	if err != nil {
		return nil, fmt.Errorf("store: read secret %s: %w", name, err)
	}
	if len(resp.Kvs) > 0 {
		return resp.Kvs[0].Value, nil
	}
	v, err := gen()
	if err != nil {
		return nil, err
	}
	tr, err := s.client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(v))).Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return nil, fmt.Errorf("store: write secret %s: %w", name, err)
	}
	if tr.Succeeded {
		return v, nil
	}
	return tr.Responses[0].GetResponseRange().Kvs[0].Value, nil
}

// eventOp is the put of one event, to include in a transaction.
func (s *Store) eventOp(ev api.Event) (clientv3.Op, error) {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return clientv3.Op{}, fmt.Errorf("store: encode event: %w", err)
	}
	// Time first so that keys sort by time; the random tail keeps two
	// servers' events at the same nanosecond apart.
	k := s.key(dirEvents, fmt.Sprintf("%020d-%s", ev.Time.UnixNano(), randHex(4)))
	return clientv3.OpPut(k, string(b)), nil
}

// AppendEvent records one event.
func (s *Store) AppendEvent(ctx context.Context, ev api.Event) error {
	op, err := s.eventOp(ev)
	if err != nil {
		return err
	}
	if _, err := s.client.Do(ctx, op); err != nil {
		return fmt.Errorf("store: write event: %w", err)
	}
	s.trimEvents(ctx)
	return nil
}

// trimEvents keeps the newest maxEvents events. A failure is only logged:
// the log grows a little until the next trim.
func (s *Store) trimEvents(ctx context.Context) {
	dir := s.dir(dirEvents)
	resp, err := s.client.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		s.log.Warn("count events", "err", err)
		return
	}
	extra := resp.Count - int64(s.maxEvents)
	if extra <= 0 {
		return
	}
	old, err := s.client.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithLimit(extra), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil || len(old.Kvs) == 0 {
		return
	}
	last := string(old.Kvs[len(old.Kvs)-1].Key)
	if _, err := s.client.Delete(ctx, dir, clientv3.WithRange(last+"\x00")); err != nil {
		s.log.Warn("trim events", "err", err)
	}
}

// Events returns up to limit of the newest events, oldest first.
func (s *Store) Events(ctx context.Context, limit int) ([]api.Event, error) {
	if limit <= 0 || limit > s.maxEvents {
		limit = s.maxEvents
	}
	resp, err := s.client.Get(ctx, s.dir(dirEvents), clientv3.WithPrefix(),
		clientv3.WithLimit(int64(limit)), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	if err != nil {
		return nil, fmt.Errorf("store: read events: %w", err)
	}
	out := make([]api.Event, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var ev api.Event
		if err := json.Unmarshal(kv.Value, &ev); err != nil {
			continue
		}
		ev.Revision = kv.ModRevision
		out = append(out, ev)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Revision < out[j].Revision })
	return out, nil
}

// Backup streams an etcd snapshot of the whole keyspace to w.
func (s *Store) Backup(ctx context.Context, w io.Writer) (int64, error) {
	rc, err := s.client.Maintenance.Snapshot(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: start snapshot: %w", err)
	}
	defer rc.Close()
	n, err := io.Copy(w, rc)
	if err != nil {
		return n, fmt.Errorf("store: read snapshot: %w", err)
	}
	return n, nil
}
