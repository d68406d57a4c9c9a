package agent

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/dataplane"
)

// metrics of one agent. Each agent has its own registry, so that several
// agents can live in one process (tests, simulated fleets).
type metrics struct {
	fences            prometheus.Counter
	reg               *prometheus.Registry
	reconcileDuration prometheus.Histogram
	reconcileErrors   prometheus.Counter
	appliedRevision   prometheus.Gauge
	handshakeRetries  prometheus.Counter
	keyRotations      prometheus.Counter
	desiredRejected   *prometheus.CounterVec
	guests            *prometheus.GaugeVec
	renewals          *prometheus.CounterVec
	certNotAfter      prometheus.Gauge
	offloadedFlows    *prometheus.GaugeVec
	paths             *pathCollector
}

var taskStates = []string{api.TaskPending, api.TaskStarting, api.TaskRunning, api.TaskFailed, api.TaskStopped}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		reconcileDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "reconcile_duration_seconds",
			Help:    "Time to reconcile the host with its desired state (guests and data plane).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16), // 1 ms to about 33 s
		}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "reconcile_errors_total",
			Help: "Reconcile passes that ended with at least one error.",
		}),
		appliedRevision: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "applied_revision",
			Help: "Revision of the desired state last applied without error.",
		}),
		handshakeRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "handshake_retries_total",
			Help: "WireGuard peers whose first handshake was restarted after it stalled (crossed initiations).",
		}),
		keyRotations: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "key_rotations_total",
			Help: "WireGuard key pairs made by this agent on the server's request (corridor server rotate-key).",
		}),
		desiredRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "desired_rejected_total",
			Help: "Desired states refused (neither kept nor applied), by where they came from (server, disk) and why (unsigned, bad_signature, newer_schema, invalid).",
		}, []string{"source", "reason"}),
		fences: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "fences_total",
			Help: "Times this host's paths were stopped because its lease with the control plane ran out (--fence-after).",
		}),
		guests: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "guests",
			Help: "Guests of this host by state.",
		}, []string{"state"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "certificate_renewals_total",
			Help: "Renewals of the agent's client certificate over mTLS, by result (ok, error).",
		}, []string{"result"}),
		certNotAfter: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "certificate_not_after_timestamp_seconds",
			Help: "When the agent's client certificate expires (Unix time); it is renewed at two thirds of its lifetime.",
		}),
		offloadedFlows: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "offloaded_flows",
			Help: "Connections offloaded to the nftables flowtable when the last status was read, by path (plain; encrypted is a fail-closed breach and should stay 0). Absent where flow offload is off or unavailable.",
		}, []string{"path"}),
	}
	for _, src := range []string{sourceServer, sourceDisk} {
		for _, why := range []string{"unsigned", "bad_signature", "newer_schema", "invalid"} {
			m.desiredRejected.WithLabelValues(src, why) // every series at 0 from the first scrape
		}
	}
	m.paths = &pathCollector{}
	m.reg.MustRegister(m.reconcileDuration, m.reconcileErrors, m.appliedRevision, m.handshakeRetries, m.keyRotations, m.desiredRejected, m.guests, m.paths, m.fences, m.renewals, m.certNotAfter, m.offloadedFlows,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// setOffload exports the offloaded connections of the last status (none
// where offload is not on).
func (m *metrics) setOffload(mode string, plain, encrypted int) {
	if mode != "on" {
		m.offloadedFlows.Reset()
		return
	}
	m.offloadedFlows.WithLabelValues("plain").Set(float64(plain))
	m.offloadedFlows.WithLabelValues("encrypted").Set(float64(encrypted))
}

// setGuests replaces the per-state guest counts; states with no guest show 0.
func (m *metrics) setGuests(tasks []api.TaskStatus) {
	counts := make(map[string]int, len(taskStates))
	for _, s := range taskStates {
		counts[s] = 0
	}
	for _, t := range tasks {
		counts[t.State]++
	}
	for s, n := range counts {
		m.guests.WithLabelValues(s).Set(float64(n))
	}
}

// pathCollector exports the data plane's own counters as the last status
// read them: WireGuard peers (bytes, handshake) and the firewall's drop
// counters per app and class pair. They are counters kept by the kernel or
// wireguard-go, so they are exported as const metrics, not re-counted.
type pathCollector struct {
	mu    sync.Mutex
	peers []api.PeerStatus
	drops []api.DropCount
}

var (
	peerRxDesc = prometheus.NewDesc("corridor_agent_peer_received_bytes_total",
		"Bytes received from a WireGuard peer (a server sharing an encrypted path).", []string{"peer"}, nil)
	peerTxDesc = prometheus.NewDesc("corridor_agent_peer_sent_bytes_total",
		"Bytes sent to a WireGuard peer.", []string{"peer"}, nil)
	peerHandshakeDesc = prometheus.NewDesc("corridor_agent_peer_last_handshake_seconds",
		"Unix time of the last WireGuard handshake with a peer (0: never).", []string{"peer"}, nil)
	peerHandshakeAgeDesc = prometheus.NewDesc("corridor_agent_peer_handshake_age_seconds",
		"Seconds since the last WireGuard handshake with a peer, at scrape time (no series until the first handshake). Every encrypted path between this host and the peer rides on it.", []string{"peer"}, nil)
	dropDesc = prometheus.NewDesc("corridor_agent_firewall_dropped_packets_total",
		"Packets the firewall dropped, by app, class pair and kind (pair: wrong port or path for an allowed pair; out/in: no rule; spoof, path, host, invalid).",
		[]string{"app", "from_class", "to_class", "kind"}, nil)
	dropBytesDesc = prometheus.NewDesc("corridor_agent_firewall_dropped_bytes_total",
		"Bytes of the packets counted by corridor_agent_firewall_dropped_packets_total.",
		[]string{"app", "from_class", "to_class", "kind"}, nil)
	allowDesc = prometheus.NewDesc("corridor_agent_firewall_allowed_connections_total",
		"Connections the firewall let out of a local guest, by app and class pair (the first packet of each; established traffic is accepted by conntrack and not counted per pair).",
		[]string{"app", "from_class", "to_class"}, nil)
	allowBytesDesc = prometheus.NewDesc("corridor_agent_firewall_allowed_bytes_total",
		"Bytes of the first packets of the connections counted by corridor_agent_firewall_allowed_connections_total.",
		[]string{"app", "from_class", "to_class"}, nil)
)

func (c *pathCollector) set(peers []api.PeerStatus, drops []api.DropCount) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peers, c.drops = peers, drops
}

func (c *pathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- peerRxDesc
	ch <- peerTxDesc
	ch <- peerHandshakeDesc
	ch <- peerHandshakeAgeDesc
	ch <- dropDesc
	ch <- dropBytesDesc
	ch <- allowDesc
	ch <- allowBytesDesc
}

func (c *pathCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range onePerServer(c.peers) {
		ch <- prometheus.MustNewConstMetric(peerRxDesc, prometheus.CounterValue, float64(p.RxBytes), p.Server)
		ch <- prometheus.MustNewConstMetric(peerTxDesc, prometheus.CounterValue, float64(p.TxBytes), p.Server)
		hs := 0.0
		if !p.LastHandshake.IsZero() {
			hs = float64(p.LastHandshake.UnixNano()) / 1e9
			ch <- prometheus.MustNewConstMetric(peerHandshakeAgeDesc, prometheus.GaugeValue, max(0, time.Since(p.LastHandshake).Seconds()), p.Server)
		}
		ch <- prometheus.MustNewConstMetric(peerHandshakeDesc, prometheus.GaugeValue, hs, p.Server)
	}
	seen := map[[4]string]bool{}
	for _, d := range c.drops {
		kind := d.Kind
		if kind == "" {
			kind = "pair"
		}
		k := [4]string{d.App, d.FromClass, d.ToClass, kind}
		if seen[k] { // one series per label set, or the registry refuses the scrape
			continue
		}
		seen[k] = true
		if kind == dataplane.Allowed {
			ch <- prometheus.MustNewConstMetric(allowDesc, prometheus.CounterValue, float64(d.Packets), k[:3]...)
			ch <- prometheus.MustNewConstMetric(allowBytesDesc, prometheus.CounterValue, float64(d.Bytes), k[:3]...)
			continue
		}
		ch <- prometheus.MustNewConstMetric(dropDesc, prometheus.CounterValue, float64(d.Packets), k[:]...)
		ch <- prometheus.MustNewConstMetric(dropBytesDesc, prometheus.CounterValue, float64(d.Bytes), k[:]...)
	}
}

// onePerServer keeps one entry per peer server, in order: during a key
// rotation a peer is listed on both WireGuard devices, and the registry
// refuses a scrape with two series of one label set. The entry kept is the
// one the routes take, else the first device's.
func onePerServer(peers []api.PeerStatus) []api.PeerStatus {
	at := map[string]int{}
	var out []api.PeerStatus
	for _, p := range peers {
		i, ok := at[p.Server]
		switch {
		case !ok:
			at[p.Server] = len(out)
			out = append(out, p)
		case p.Routed || (!out[i].Routed && out[i].Spare && !p.Spare):
			out[i] = p
		}
	}
	return out
}
