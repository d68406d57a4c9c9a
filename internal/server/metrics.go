package server

import (
	"net/http"
	"time"

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
	applySeconds   *prometheus.HistogramVec
	fanoutSeconds  prometheus.Histogram
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
	}
	m.applySeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "corridor", Name: "apply_duration_seconds",
		Help:    "Time to handle a change of apps through the API (validate, dry-run compile against the fleet, store), by operation (apply, scale, delete) and outcome (ok, error).",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
	}, []string{"op", "outcome"})
	m.fanoutSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "corridor", Name: "fanout_duration_seconds",
		Help:    "Per host, time from a new desired state being written to the host's agent reporting it applied (as seen by this server's watch).",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 16),
	})
	for _, op := range []string{"apply", "scale", "delete"} {
		for _, o := range []string{"ok", "error"} {
			m.applySeconds.WithLabelValues(op, o) // every series from the first scrape
		}
	}
	m.reg.MustRegister(m.applySeconds, m.fanoutSeconds)
	m.reg.MustRegister(m.requests, m.compileSeconds, m.hosts, m.revisions, m.waiters,
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

// timed observes how long fn takes, as corridor_apply_duration_seconds of
// op, with its outcome (ok below status 400, else error).
func (s *Server) timed(op string, fn http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		fn(rec, r)
		outcome := "ok"
		if rec.code >= 400 {
			outcome = "error"
		}
		s.m.applySeconds.WithLabelValues(op, outcome).Observe(time.Since(start).Seconds())
	}
}
