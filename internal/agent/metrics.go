package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/corridor-dev/corridor/internal/api"
)

// metrics of one agent. Each agent has its own registry, so that several
// agents can live in one process (tests, simulated fleets).
type metrics struct {
	reg               *prometheus.Registry
	reconcileDuration prometheus.Histogram
	reconcileErrors   prometheus.Counter
	appliedRevision   prometheus.Gauge
	guests            *prometheus.GaugeVec
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
		guests: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "corridor", Subsystem: "agent", Name: "guests",
			Help: "Guests of this host by state.",
		}, []string{"state"}),
	}
	m.reg.MustRegister(m.reconcileDuration, m.reconcileErrors, m.appliedRevision, m.guests,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
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
