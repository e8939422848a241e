package health

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// catalogDataSets are the CatalogWatcher's loops as Status data sets: the
// blocking queries of the node and service lists, then "view", the view they
// and the asked services' watches rebuild. (The checks query runs only while
// services are polled, so it cannot count towards readiness.)
var catalogDataSets = [...]string{"nodes", "services", "view"}

// DataSetCatalog names the CatalogWatcher's reads in a Status.
const DataSetCatalog DataSetKind = "catalog"

// catalogStatus records the CatalogWatcher's syncs and publishes them as an
// immutable Status.
type catalogStatus struct {
	mu  sync.Mutex
	cur Status // DataSets in catalogDataSets order; copied out by Status
}

func (s *catalogStatus) start(now time.Time, maxStaleness time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur = Status{Started: now, MaxStaleness: maxStaleness, DataSets: make([]DataSetStatus, len(catalogDataSets))}
	for i, n := range catalogDataSets {
		s.cur.DataSets[i] = DataSetStatus{Kind: DataSetCatalog, Name: n}
	}
}

func (s *catalogStatus) dataSet(name string) *DataSetStatus {
	for i := range s.cur.DataSets {
		if s.cur.DataSets[i].Name == name {
			return &s.cur.DataSets[i]
		}
	}
	return nil
}

// ok records Consul answering name's query (at index, 0 if none).
func (s *catalogStatus) ok(name string, index uint64, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.dataSet(name)
	if d == nil {
		return
	}
	d.LastSuccess, d.Failing = now, false
	if index != 0 {
		d.Index = index
	}
	// A blocking query answering says the view still matches Consul, as
	// long as the reads that follow changes succeed: on a quiet catalog
	// the view is fresh without being read again.
	if v := s.dataSet("view"); v != nil && name != "view" && !v.Failing && !v.LastSuccess.IsZero() {
		v.LastSuccess = now
	}
}

// fail records a failed read of name.
func (s *catalogStatus) fail(name string, err error, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.dataSet(name); d != nil {
		d.Errors++
		d.Failing, d.LastError, d.LastErrorAt = true, err, now
	}
}

func (s *catalogStatus) status() *Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.cur
	st.DataSets = append([]DataSetStatus(nil), s.cur.DataSets...)
	return &st
}

// Status returns the watcher's sync state: one data set per blocking query
// (nodes, services, checks) and "view", the whole read of the catalog,
// which stays fresh while the queries answer and no read fails. Ready is
// false once any has gone MaxStaleness without Consul answering.
func (w *CatalogWatcher) Status() *Status { return w.stat.status() }

var catalogReadyDesc = prometheus.NewDesc("farmdns_consul_catalog_ready",
	"1 while the catalog read for consul_dns has been confirmed within max_staleness; 0 means Consul DNS answers rest on old data.", nil, nil)

// Collector returns the collector of the watcher's sync state: its data
// sets under farmdns_consul_last_sync_timestamp_seconds and
// farmdns_consul_sync_errors_total as "catalog:<name>", and
// farmdns_consul_catalog_ready. It shares metric names with the pool
// watcher's collector: register the two through one that describes nothing.
func (w *CatalogWatcher) Collector() prometheus.Collector { return catalogCollector{w} }

type catalogCollector struct{ w *CatalogWatcher }

func (catalogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- lastSyncDesc
	ch <- syncErrorsDesc
	ch <- catalogReadyDesc
}

func (c catalogCollector) Collect(ch chan<- prometheus.Metric) {
	collectSync(ch, c.w.Status(), catalogReadyDesc)
}
