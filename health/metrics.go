package health

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func newReportLag() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "farmdns_consul_propagation_lag_seconds",
		Help: "Age of each new load report when farmdns sees it: from the reporter's count, through Consul, to the snapshot.",
		// 10 ms to 82 s: reports a heartbeat apart are expected, a minute is not.
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
	})
}

var (
	lastSyncDesc = prometheus.NewDesc("farmdns_consul_last_sync_timestamp_seconds",
		"When Consul last answered the data set's blocking query.", []string{"dataset"}, nil)
	syncErrorsDesc = prometheus.NewDesc("farmdns_consul_sync_errors_total",
		"Failed Consul reads of the data set.", []string{"dataset"}, nil)
	readyDesc = prometheus.NewDesc("farmdns_consul_ready",
		"1 while every data set has been read within max_staleness; 0 means the answers rest on old data.", nil, nil)
	malformedDesc = prometheus.NewDesc("farmdns_consul_malformed_values_total",
		"Malformed load reports and service meta seen (each distinct bad value once); their loads count as unknown.", nil, nil)
	snapshotsDesc = prometheus.NewDesc("farmdns_consul_snapshots_total",
		"Snapshots published: how often the farm as Consul sees it changed.", nil, nil)
	restoredDesc = prometheus.NewDesc("farmdns_consul_state_restored",
		"1 while some pools are served from the state file saved by an earlier run, because Consul has not answered for them since the start.", nil, nil)
	stateSaveDesc = prometheus.NewDesc("farmdns_consul_state_last_save_timestamp_seconds",
		"When the state file (consul.state_file) was last written whole.", nil, nil)
	stateErrorsDesc = prometheus.NewDesc("farmdns_consul_state_save_errors_total",
		"Failed writes of the state file.", nil, nil)
)

type collector struct{ w *Watcher }

// Collector returns the Prometheus collector of the watcher's sync state. It
// reads the live status at scrape time.
func (w *Watcher) Collector() prometheus.Collector { return collector{w} }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{lastSyncDesc, syncErrorsDesc, readyDesc, malformedDesc, snapshotsDesc, restoredDesc, stateSaveDesc, stateErrorsDesc} {
		ch <- d
	}
	c.w.reportLag.Describe(ch)
}

// collectSync sends a watcher's per-data-set sync metrics and its
// readiness, as ready: the service watcher's and the catalog watcher's.
func collectSync(ch chan<- prometheus.Metric, st *Status, ready *prometheus.Desc) {
	for _, d := range st.DataSets {
		name := string(d.Kind) + ":" + d.Name
		if !d.LastSuccess.IsZero() {
			ch <- prometheus.MustNewConstMetric(lastSyncDesc, prometheus.GaugeValue, float64(d.LastSuccess.UnixNano())/1e9, name)
		}
		ch <- prometheus.MustNewConstMetric(syncErrorsDesc, prometheus.CounterValue, float64(d.Errors), name)
	}
	v := 0.0
	if ok, _ := st.Ready(time.Now()); ok {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(ready, prometheus.GaugeValue, v)
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.w.Status()
	collectSync(ch, st, readyDesc)
	ch <- prometheus.MustNewConstMetric(malformedDesc, prometheus.CounterValue, float64(st.MalformedTotal+st.InvalidAddressTotal))
	ch <- prometheus.MustNewConstMetric(snapshotsDesc, prometheus.CounterValue, float64(st.Publishes))
	restored := 0.0
	if st.ServingSaved() {
		restored = 1
	}
	ch <- prometheus.MustNewConstMetric(restoredDesc, prometheus.GaugeValue, restored)
	if sf := c.w.StateFile(); sf.Path != "" {
		if !sf.LastSave.IsZero() {
			ch <- prometheus.MustNewConstMetric(stateSaveDesc, prometheus.GaugeValue, float64(sf.LastSave.UnixNano())/1e9)
		}
		ch <- prometheus.MustNewConstMetric(stateErrorsDesc, prometheus.CounterValue, float64(sf.Errors))
	}
	c.w.reportLag.Collect(ch)
}
