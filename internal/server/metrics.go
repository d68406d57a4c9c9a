package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/spec"
)

// metrics are the server's Prometheus metrics, on a registry of its own so
// that several servers can live in one process (tests, benchmarks).
type metrics struct {
	reg            *prometheus.Registry
	requests       *prometheus.CounterVec
	compileSeconds prometheus.Histogram
	hosts          *prometheus.GaugeVec
	revisions      prometheus.Counter
	waiters        prometheus.Gauge
	pending        prometheus.Gauge
}

var hostStates = []string{spec.ServerReady, spec.ServerDraining, spec.ServerDown, api.ServerRevoked}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "corridor", Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests served, by route pattern and status code.",
		}, []string{"route", "code"}),
		compileSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "corridor", Name: "compile_duration_seconds",
			Help:    "Time the compiler took, per controller reconcile.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		hosts: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "corridor", Name: "hosts",
			Help: "Servers by effective state, as the controller last saw them.",
		}, []string{"state"}),
		revisions: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "corridor", Name: "desired_state_revisions_total",
			Help: "Desired states written with a new revision (only when a host's state changed).",
		}),
		waiters: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "corridor", Name: "long_poll_waiters",
			Help: "Agents currently long-polling their desired state on this server.",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "corridor", Name: "tasks_pending",
			Help: "Tasks no server can take (too little room, no server with the labels), at the leader's last compile.",
		}),
	}
	m.reg.MustRegister(m.requests, m.compileSeconds, m.hosts, m.revisions, m.waiters, m.pending,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) setHostStates(states map[string]string) {
	counts := map[string]int{}
	for _, s := range states {
		counts[s]++
	}
	for _, s := range hostStates {
		m.hosts.WithLabelValues(s).Set(float64(counts[s]))
	}
}
