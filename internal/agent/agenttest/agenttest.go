// Package agenttest holds in-memory fakes of what the agent drives: a
// control plane with a real CA, a guest runtime and a data plane. They
// behave like the real ones where the agent can tell (long polls block,
// joins check the token and sign the CSR, Apply replaces the whole state
// and can be undone by hand), so that the agent's loop is tested without
// root or a server, and a fleet of simulated agents can run in one process.
package agenttest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
	"github.com/corridor-dev/corridor/internal/dataplane"
)

// ErrDown is what the fakes answer while they are set down.
var ErrDown = errors.New("agenttest: unavailable")

// Events records, in order, what the fakes were asked to do, as
// "kind:detail" strings ("ensure:shop/web/0", "apply:7", ...), so that tests
// can check the order of operations across fakes.
type Events struct {
	mu  sync.Mutex
	log []string
}

// Add records one event; a nil *Events records nothing.
func (e *Events) Add(format string, args ...any) {
	if e == nil {
		return
	}
	e.mu.Lock()
	e.log = append(e.log, fmt.Sprintf(format, args...))
	e.mu.Unlock()
}

// List returns a copy of the events so far.
func (e *Events) List() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.log)
}

// CA is a throwaway certificate authority.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     *ecdsa.PrivateKey
	serial  int64
	mu      sync.Mutex
}

// NewCA makes a CA valid for a day.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "corridor test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), key: key, serial: 1}, nil
}

// SignState signs a desired state with the CA's key, as the server does.
func (ca *CA) SignState(ds *api.DesiredState) error { return ds.Sign(ca.key) }

// SignCSR issues a client certificate for a PEM CSR, valid for validity.
func (ca *CA) SignCSR(csrPEM []byte, validity time.Duration) ([]byte, error) {
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("csr: no PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	return ca.issue(csr.Subject.CommonName, csr.DNSNames, csr.PublicKey, validity)
}

// Issue makes a fresh key and a certificate with CN cn: key and cert PEM.
func (ca *CA) Issue(cn string) (keyPEM, certPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = ca.issue(cn, []string{cn}, &key.PublicKey, time.Hour)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("PRIVATE KEY", der), certPEM, nil
}

func (ca *CA) issue(cn string, dns []string, pub any, validity time.Duration) ([]byte, error) {
	ca.mu.Lock()
	ca.serial++
	serial := ca.serial
	ca.mu.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dns,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Client auth only, as the Corridor server's CA issues them: the
		// agent's local API serves this certificate all the same.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, err
	}
	return pemBlock("CERTIFICATE", der), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// ControlPlane is a fake Corridor server: join with a token, per-host
// desired states with revisions and blocking long polls, status reports.
type ControlPlane struct {
	CA    *CA
	Token string
	// CertValidity of the certificates issued at join (default an hour).
	CertValidity time.Duration

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change
	desired  map[string]api.DesiredState
	revision int64
	down     bool
	failNext int
	joins    int
	polls    int
	pollAt   []time.Time
	statuses map[string][]api.Status
}

// NewControlPlane makes a fake server with its own CA.
func NewControlPlane(token string) (*ControlPlane, error) {
	ca, err := NewCA()
	if err != nil {
		return nil, err
	}
	return &ControlPlane{
		CA: ca, Token: token, CertValidity: time.Hour,
		changed:  make(chan struct{}),
		desired:  map[string]api.DesiredState{},
		statuses: map[string][]api.Status{},
	}, nil
}

// SetDesired gives host a new desired state at the next revision, signed
// with the CA's key as the real server signs it, and returns that
// revision. Blocked polls of that host answer at once.
func (cp *ControlPlane) SetDesired(st compile.HostState) int64 {
	return cp.SetEnvelope(api.DesiredState{State: st}, func(ds *api.DesiredState) error { return cp.CA.SignState(ds) })
}

// SetEnvelope serves ds as host's desired state at the next revision,
// after sign (nil: as it is, signature included), and returns that
// revision: for tests of unsigned or badly signed states.
func (cp *ControlPlane) SetEnvelope(ds api.DesiredState, sign func(*api.DesiredState) error) int64 {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.revision++
	ds.Revision = cp.revision
	if sign != nil {
		if err := sign(&ds); err != nil {
			panic("agenttest: sign desired state: " + err.Error())
		}
	}
	cp.desired[ds.State.Host] = ds
	close(cp.changed)
	cp.changed = make(chan struct{})
	return cp.revision
}

// SetDown makes every call fail with ErrDown while down is true.
func (cp *ControlPlane) SetDown(down bool) {
	cp.mu.Lock()
	cp.down = down
	cp.mu.Unlock()
}

// FailNext makes the next n calls fail with ErrDown.
func (cp *ControlPlane) FailNext(n int) {
	cp.mu.Lock()
	cp.failNext = n
	cp.mu.Unlock()
}

// Joins counts successful joins.
func (cp *ControlPlane) Joins() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.joins
}

// PollTimes are the times of every Desired call, failed or not.
func (cp *ControlPlane) PollTimes() []time.Time {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return slices.Clone(cp.pollAt)
}

// Statuses are the reports received from host, oldest first.
func (cp *ControlPlane) Statuses(host string) []api.Status {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return slices.Clone(cp.statuses[host])
}

// failing reports whether this call fails; cp.mu is held.
func (cp *ControlPlane) failing() bool {
	if cp.down {
		return true
	}
	if cp.failNext > 0 {
		cp.failNext--
		return true
	}
	return false
}

// Bootstrap is the client an agent has before it joins: it may only join
// (with the token in the request, as the real server wants it).
func (cp *ControlPlane) Bootstrap() *Client {
	return &Client{cp: cp}
}

// Connect is the client an agent gets with its identity: it may poll and
// report, as the host named in the certificate, once the certificate
// verifies against the CA.
func (cp *ControlPlane) Connect(certPEM []byte) (*Client, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return nil, errors.New("agenttest: no PEM certificate")
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cp.CA.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("agenttest: certificate refused: %w", err)
	}
	return &Client{cp: cp, host: cert.Subject.CommonName}, nil
}

// Client is one agent's view of the fake server.
type Client struct {
	cp   *ControlPlane
	host string // mTLS clients: the CN of their certificate
}

// Join checks the token and signs the CSR.
func (c *Client) Join(_ context.Context, req api.JoinRequest) (api.JoinResponse, error) {
	cp := c.cp
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.failing() {
		return api.JoinResponse{}, ErrDown
	}
	if req.Token != cp.Token {
		return api.JoinResponse{}, &api.StatusError{Code: 401, Message: "wrong join token"}
	}
	if req.Name == "" || req.PublicKey == "" {
		return api.JoinResponse{}, &api.StatusError{Code: 422, Message: "join request without name or public key"}
	}
	cert, err := cp.CA.SignCSR([]byte(req.CSR), cp.CertValidity)
	if err != nil {
		return api.JoinResponse{}, err
	}
	cp.joins++
	return api.JoinResponse{Certificate: string(cert), CA: string(cp.CA.CertPEM)}, nil
}

// Desired answers at once when the host's revision differs from index,
// else when it changes or after wait, as the real long poll does.
func (c *Client) Desired(ctx context.Context, name string, index int64, wait time.Duration) (api.DesiredState, error) {
	if err := c.authorized(name); err != nil {
		return api.DesiredState{}, err
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	first := true
	for {
		c.cp.mu.Lock()
		if first {
			c.cp.polls++
			c.cp.pollAt = append(c.cp.pollAt, time.Now())
			if c.cp.failing() {
				c.cp.mu.Unlock()
				return api.DesiredState{}, ErrDown
			}
			first = false
		}
		ds := c.cp.desired[name]
		changed := c.cp.changed
		c.cp.mu.Unlock()
		if ds.Revision != index {
			return ds, nil
		}
		select {
		case <-ctx.Done():
			return api.DesiredState{}, ctx.Err()
		case <-deadline.C:
			return ds, nil
		case <-changed:
		}
	}
}

// ReportStatus stores the report.
func (c *Client) ReportStatus(_ context.Context, name string, st api.Status) error {
	if err := c.authorized(name); err != nil {
		return err
	}
	c.cp.mu.Lock()
	defer c.cp.mu.Unlock()
	if c.cp.down {
		return ErrDown
	}
	c.cp.statuses[name] = append(c.cp.statuses[name], st)
	return nil
}

func (c *Client) authorized(name string) error {
	if c.host == "" {
		return &api.StatusError{Code: 401, Message: "a client without certificate may only join"}
	}
	if c.host != name {
		return &api.StatusError{Code: 403, Message: fmt.Sprintf("%s may not act for %s", c.host, name)}
	}
	return nil
}

// Guests is a fake guest runtime: a map of running guests.
type Guests struct {
	Events *Events
	// Dataplane, when set, is checked at every Ensure of a new guest: its
	// kernel state must already hold the guest's address (fail closed).
	Dataplane *Dataplane

	mu         sync.Mutex
	guests     map[string]compile.Guest
	fail       map[string]error
	violations []string
	ensures    int
}

// NewGuests makes an empty runtime.
func NewGuests(ev *Events) *Guests {
	return &Guests{Events: ev, guests: map[string]compile.Guest{}, fail: map[string]error{}}
}

// Fail makes Ensure of task fail with err (nil: succeed again).
func (g *Guests) Fail(task string, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err == nil {
		delete(g.fail, task)
	} else {
		g.fail[task] = err
	}
}

// Add makes a guest exist, as if started earlier (by a previous agent run).
func (g *Guests) Add(gu compile.Guest) {
	g.mu.Lock()
	g.guests[gu.Task] = gu
	g.mu.Unlock()
}

// Ensure starts the guest if it does not run.
func (g *Guests) Ensure(_ context.Context, gu compile.Guest) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ensures++
	if err := g.fail[gu.Task]; err != nil {
		return err
	}
	if _, ok := g.guests[gu.Task]; !ok {
		if g.Dataplane != nil && !g.Dataplane.covers(gu) {
			g.violations = append(g.violations, gu.Task)
		}
		g.Events.Add("start:%s", gu.Task)
	}
	g.guests[gu.Task] = gu
	return nil
}

// Remove stops the guest; removing a missing guest is no error.
func (g *Guests) Remove(_ context.Context, task string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.guests[task]; ok {
		g.Events.Add("remove:%s", task)
	}
	delete(g.guests, task)
	return nil
}

// List gives the running guests' tasks, sorted.
func (g *Guests) List(context.Context) ([]string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	tasks := make([]string, 0, len(g.guests))
	for t := range g.guests {
		tasks = append(tasks, t)
	}
	slices.Sort(tasks)
	return tasks, nil
}

// Status says running for a running guest, failed for one whose Ensure
// fails, and pending otherwise.
func (g *Guests) Status(task string) api.TaskStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := api.TaskStatus{Task: task, Runtime: "netns", State: api.TaskPending}
	if err := g.fail[task]; err != nil {
		st.State, st.Message = api.TaskFailed, err.Error()
	} else if _, ok := g.guests[task]; ok {
		st.State = api.TaskRunning
	}
	return st
}

// Running reports whether task runs.
func (g *Guests) Running(task string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.guests[task]
	return ok
}

// Violations are the guests started while the data plane did not cover
// their address yet.
func (g *Guests) Violations() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.violations)
}

// Dataplane is a fake data plane whose "kernel" is the last applied state,
// which tests can change behind the agent's back (Tamper) to model drift.
type Dataplane struct {
	Events *Events
	// Drops is what Status reports as drop counters; set it with SetDrops
	// once the agent runs.
	Drops []api.DropCount

	mu      sync.Mutex
	kernel  compile.HostState
	offload struct {
		mode             string
		plain, encrypted int
	}
	applies int
	fail    error
	removed bool
	key     wgtypes.Key // private, as a real host's
	keyGen  int64
	next    *wgtypes.Key // the next key of a rotation under way
	nextGen int64
	open    map[netip.Addr]int // OpenConns
}

// NewDataplane makes an empty data plane with a fresh WireGuard key.
func NewDataplane(ev *Events) *Dataplane {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		panic(err)
	}
	return &Dataplane{Events: ev, key: k}
}

// Key is the public key and its generation.
func (d *Dataplane) Key() (string, int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.key.PublicKey().String(), d.keyGen
}

// PrepareKey makes the next key for a later generation, as the real one:
// the current key stays until a state commits the next one.
func (d *Dataplane) PrepareKey(generation int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if generation <= d.keyGen || (d.next != nil && generation <= d.nextGen) {
		return nil
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	d.next, d.nextGen = &k, generation
	d.Events.Add("prepare-key:%d", generation)
	return nil
}

// NextKey is the public half of the next key and its generation.
func (d *Dataplane) NextKey() (string, int64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.next == nil {
		return "", 0, false
	}
	return d.next.PublicKey().String(), d.nextGen, true
}

// Apply replaces the kernel state with st.
func (d *Dataplane) Apply(_ context.Context, st compile.HostState) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.applies++
	if d.fail != nil {
		return d.fail
	}
	if d.next != nil && st.PublicKey == d.next.PublicKey().String() {
		d.key, d.keyGen, d.next, d.nextGen = *d.next, d.nextGen, nil, 0
		d.Events.Add("commit-key:%d", d.keyGen)
	}
	d.kernel = clone(st)
	d.removed = false
	d.Events.Add("apply:%d", len(st.Guests))
	return nil
}

// RetryStalledHandshakes has nothing to retry: fake peers handshake at
// once.
func (d *Dataplane) RetryStalledHandshakes(time.Time) (dataplane.HandshakeCheck, error) {
	return dataplane.HandshakeCheck{}, nil
}

// Status reports one peer per kernel peer, with a handshake a few seconds
// old and bytes that grow with the number of applies.
func (d *Dataplane) Status(context.Context) (agent.DataplaneStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var st agent.DataplaneStatus
	// During a key rotation the peers' routes are on the second device
	// when the rotation moves them there (own rotation with a next key,
	// or a peer's next key announced), on the first otherwise: fake
	// handshakes are instant.
	own := d.next != nil
	spareUp := own || d.kernel.RotationPhase != ""
	for _, p := range d.kernel.Peers {
		ps := api.PeerStatus{
			Server: p.Server, PublicKey: p.PublicKey, LastHandshake: time.Now().Add(-3 * time.Second),
			RxBytes: int64(1000 * d.applies), TxBytes: int64(2000 * d.applies),
		}
		toSpare := own || (p.NextPublicKey != "" && p.NextPublicKey != p.PublicKey)
		ps.Routed = !toSpare
		st.Peers = append(st.Peers, ps)
		if spareUp || p.NextPublicKey != "" {
			sp := ps
			sp.Spare, sp.Routed = true, toSpare
			if !spareUp {
				sp.PublicKey = p.NextPublicKey
			}
			st.Peers = append(st.Peers, sp)
		}
	}
	st.Drops = slices.Clone(d.Drops)
	st.FlowOffload, st.OffloadedFlows, st.OffloadedEncrypted = d.offload.mode, d.offload.plain, d.offload.encrypted
	return st, nil
}

// SetOffload sets the flow offload Status reports: its mode and the plain
// and encrypted connections offloaded.
func (d *Dataplane) SetOffload(mode string, plain, encrypted int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.offload.mode, d.offload.plain, d.offload.encrypted = mode, plain, encrypted
}

// Remove tears the data plane down.
func (d *Dataplane) Remove(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.kernel = compile.HostState{}
	d.removed = true
	d.Events.Add("dataplane-remove")
	return nil
}

// SetDrops sets the drop counters Status reports.
func (d *Dataplane) SetDrops(drops []api.DropCount) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.Drops = drops
}

// Fail makes Apply fail with err (nil: succeed again).
func (d *Dataplane) Fail(err error) {
	d.mu.Lock()
	d.fail = err
	d.mu.Unlock()
}

// Tamper changes the kernel state, as an operator editing it by hand.
func (d *Dataplane) Tamper(f func(*compile.HostState)) {
	d.mu.Lock()
	f(&d.kernel)
	d.mu.Unlock()
}

// InSync reports whether the kernel state equals st.
func (d *Dataplane) InSync(st compile.HostState) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return reflect.DeepEqual(d.kernel, clone(st))
}

// Applies counts Apply calls.
func (d *Dataplane) Applies() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.applies
}

// Removed reports whether Remove was called since the last Apply.
func (d *Dataplane) Removed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.removed
}

// covers reports whether the kernel state has firewall rules for the
// guest's address.
func (d *Dataplane) covers(g compile.Guest) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	// A staged copy is covered by the state that stages it: the real
	// data plane treats its interface as a stray's and drops everything.
	for _, k := range slices.Concat(d.kernel.Guests, d.kernel.Staged) {
		if k.Task == g.Task && k.Address == g.Address {
			return true
		}
	}
	return false
}

// SetOpenConns sets how many TCP connections OpenConns reports open to
// each address (a moving task's), until changed.
func (d *Dataplane) SetOpenConns(addr netip.Addr, n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.open == nil {
		d.open = map[netip.Addr]int{}
	}
	d.open[addr] = n
}

// FlushConns forgets the open connections of addrs, and records it.
func (d *Dataplane) FlushConns(addrs []netip.Addr) (uint, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := uint(0)
	for _, a := range addrs {
		n += uint(d.open[a])
		delete(d.open, a)
		d.Events.Add("flush:%s", a)
	}
	return n, nil
}

// OpenConns counts what SetOpenConns set for addrs.
func (d *Dataplane) OpenConns(addrs []netip.Addr) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, a := range addrs {
		n += d.open[a]
	}
	return n, nil
}

// clone deep-copies a state through JSON, as the wire does, so that the
// fake kernel shares nothing with the caller's value.
func clone(st compile.HostState) compile.HostState {
	b, err := json.Marshal(st)
	if err != nil {
		panic(err)
	}
	var out compile.HostState
	if err := json.Unmarshal(b, &out); err != nil {
		panic(err)
	}
	return out
}

// The fakes satisfy the agent's interfaces.
var (
	_ agent.ControlPlane = (*Client)(nil)
	_ agent.Guests       = (*Guests)(nil)
	_ agent.Dataplane    = (*Dataplane)(nil)
)
