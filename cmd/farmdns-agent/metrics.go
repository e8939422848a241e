package main

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Consul operations, the values of the consul_errors_total "op" label.
const (
	opNode        = "node"
	opPut         = "put"
	opRegister    = "register"
	opTTL         = "ttl"
	opMaintenance = "maintenance"
	opDeregister  = "deregister"
	opDelete      = "delete"
)

// metrics are the agent's own Prometheus metrics, prefixed farmdns_agent_.
type metrics struct {
	connections   prometheus.Gauge
	accepted      atomic.Int64 // exported by a CounterFunc
	countErrors   prometheus.Counter
	countDuration prometheus.Histogram
	writes        *prometheus.CounterVec
	writeErrors   prometheus.Counter
	consulErrors  *prometheus.CounterVec
	lastSuccess   prometheus.Gauge
	consulUp      prometheus.Gauge
	draining      prometheus.Gauge
	info          *prometheus.GaugeVec
}

// newMetrics creates the metrics and registers them with reg.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns = "farmdns_agent"
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "connections",
			Help: "Connections open at the last successful count.",
		}),
		countErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "count_errors_total",
			Help: "Counts that failed.",
		}),
		countDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "count_duration_seconds",
			Help:    "Time taken by one count, failed or not.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 10),
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "writes_total",
			Help: "Load reports written to Consul KV, by reason (first, change, heartbeat).",
		}, []string{"reason"}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "write_errors_total",
			Help: "Load report writes to Consul KV that failed.",
		}),
		consulErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "consul_errors_total",
			Help: "Failed Consul requests, by operation.",
		}, []string{"op"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "last_success_timestamp_seconds",
			Help: "Unix time of the last successful load report write.",
		}),
		consulUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "consul_up",
			Help: "1 when the last Consul request succeeded, 0 when Consul is failing.",
		}),
		draining: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "draining",
			Help: "1 while the agent drains the instance before exiting.",
		}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "info",
			Help: "Always 1; labels say what is counted and how.",
		}, []string{"service", "source"}),
	}
	acc := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: ns, Name: "accepted_connections_total",
		Help: "New established connections seen since the agent started.",
	}, func() float64 { return float64(m.accepted.Load()) })
	// Pre-create the labelled series so that they read 0 rather than missing.
	for _, r := range []string{reasonFirst, reasonChange, reasonHeartbeat} {
		m.writes.WithLabelValues(r)
	}
	for _, op := range []string{opNode, opPut, opRegister, opTTL, opMaintenance, opDeregister, opDelete} {
		m.consulErrors.WithLabelValues(op)
	}
	var errs []error
	for _, c := range []prometheus.Collector{
		m.connections, acc, m.countErrors, m.countDuration, m.writes, m.writeErrors,
		m.consulErrors, m.lastSuccess, m.consulUp, m.draining, m.info,
	} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return m, nil
}
