package main

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// healthz is the /healthz document.
type healthz struct {
	// Status is ok or failing (counting).
	Status string `json:"status"`
	// Source is how connections are counted (netlink, proc, http, file).
	Source string `json:"source"`
	// Connections and Accepted are from the last successful count.
	Connections int64 `json:"connections"`
	// Accepted is the cumulative accepted count.
	Accepted int64 `json:"accepted"`
	// Counted is when the last successful count was taken.
	Counted time.Time `json:"counted,omitzero"`
	// CountError is the last counting error, if the last count failed.
	CountError string `json:"count_error,omitempty"`
	// Report is the reporting side's state.
	Report *reportStatus `json:"report"`
}

// handler serves /metrics, /healthz and POST /drain (guarded: see
// adminhttp).
//
// /healthz answers 200 while counting works (a count in the last three
// intervals) and 503 otherwise. A Consul outage does not make the agent
// unhealthy: restarting it would not help; /healthz shows it under "report".
func (a *Agent) handler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		h := healthz{Status: "ok", Source: a.src.name(), Report: a.status.Load()}
		if s := a.latest.Load(); s != nil {
			h.Connections, h.Accepted, h.Counted = s.conns, s.accepted, s.at.UTC()
		}
		if e := a.countErr.Load(); e != nil {
			h.CountError = *e
		}
		code := http.StatusOK
		if h.Counted.IsZero() || time.Since(h.Counted) > 3*a.cfg.interval+countTimeoutSlack(a.cfg) {
			h.Status, code = "failing", http.StatusServiceUnavailable
		}
		writeJSON(w, code, h)
	})
	// Draining empties the node: only a local tool or a token holder may.
	mux.Handle("POST /drain", a.guard.Protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.asked.Store(true)
		a.RequestDrain(false)
		writeJSON(w, http.StatusAccepted, map[string]any{"draining": true, "grace": a.cfg.grace.String()})
	})))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
