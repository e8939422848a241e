package health

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// CatalogLoads is an immutable set of the load reports under one KV prefix,
// the same reports farmdns-agent writes for pools, so that the Consul DNS
// names can be ordered by load. It is read apart from the Catalog: reports
// change every few seconds, the catalog seldom, and neither should make the
// other be read again.
type CatalogLoads struct {
	prefix       string
	maxReportAge time.Duration
	reports      map[string]parsedReport // by KV key
}

// Load returns the load of one instance (service as registered) as of now:
// unknown without a report, malformed for a bad one, stale past the
// maximum report age, as the pool watcher judges them. A nil CatalogLoads
// knows no loads.
func (l *CatalogLoads) Load(service, node, serviceID string, now time.Time) Load {
	if l == nil {
		return Load{}
	}
	r, ok := l.reports[LoadKey(l.prefix, service, node, serviceID)]
	if !ok {
		return Load{}
	}
	if r.err != nil {
		return Load{State: LoadMalformed, Source: SourceKV}
	}
	updated := r.report.Updated
	if r.seen.Before(updated) {
		updated = r.seen.UTC() // a reporter's clock ahead cannot keep its report fresh
	}
	ld := Load{
		State: LoadKnown, Source: SourceKV, Connections: r.report.Connections,
		Accepted: r.report.Accepted, Capacity: r.report.Capacity, Updated: updated,
	}
	if now.Sub(updated) > l.maxReportAge {
		ld.State = LoadStale
	}
	return ld
}

// LoadWatcherConfig configures a LoadWatcher; zero values take the
// defaults of WatcherConfig.
type LoadWatcherConfig struct {
	// Prefix is the KV prefix of the load reports.
	Prefix string
	// MaxReportAge is the age beyond which a report is stale.
	MaxReportAge time.Duration
	// WaitTime bounds each blocking query.
	WaitTime time.Duration
	// MinInterval is the least time between two reads.
	MinInterval time.Duration
	// AllowStale lets any Consul server answer.
	AllowStale bool
}

// LoadWatcher keeps a CatalogLoads current with one blocking query on the
// load prefix.
type LoadWatcher struct {
	client *api.Client
	log    *slog.Logger
	cfg    LoadWatcherConfig
	loads  atomic.Pointer[CatalogLoads]
}

// NewLoadWatcher returns a watcher; Run starts it.
func NewLoadWatcher(cfg LoadWatcherConfig, client *api.Client, log *slog.Logger) (*LoadWatcher, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultLoadPrefix
	}
	if err := CheckLoadPrefix(cfg.Prefix); err != nil {
		return nil, fmt.Errorf("health: load prefix: %w", err)
	}
	cfg.Prefix = cleanPrefix(cfg.Prefix)
	cfg.MaxReportAge = cmpOr(cfg.MaxReportAge, DefaultMaxReportAge)
	cfg.WaitTime = cmpOr(cfg.WaitTime, DefaultMaxWaitTime)
	cfg.MinInterval = cmpOr(cfg.MinInterval, DefaultMinInterval)
	return &LoadWatcher{client: client, log: log, cfg: cfg}, nil
}

// Loads returns the current reports, or nil before the first read.
func (w *LoadWatcher) Loads() *CatalogLoads { return w.loads.Load() }

// Run watches until ctx is done and returns ctx's error.
func (w *LoadWatcher) Run(ctx context.Context) error {
	var index uint64
	failures := 0
	var last time.Time
	for ctx.Err() == nil {
		if wait := w.cfg.MinInterval - time.Since(last); wait > 0 && !sleep(ctx, wait) {
			break
		}
		last = time.Now()
		qctx, cancel := context.WithTimeout(ctx, w.cfg.WaitTime+w.cfg.WaitTime/16+5*time.Second)
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: w.cfg.WaitTime, AllowStale: w.cfg.AllowStale}).WithContext(qctx)
		pairs, meta, err := w.client.KV().List(w.cfg.Prefix+"/", q)
		cancel()
		if ctx.Err() != nil {
			break
		}
		if err == nil && meta != nil && meta.ResultsFilteredByACLs {
			err = fmt.Errorf("consul filtered the results by ACLs: the token lacks key_prefix read on %s", w.cfg.Prefix)
		}
		if err != nil {
			failures++
			if failures == 1 {
				w.log.Warn("consul load report watch failed; ordering by the last reports read", "err", fmt.Errorf("health: watch %s: %w", w.cfg.Prefix, consulError(err)))
			}
			index = 0 // a restarted Consul has lower indexes
			if !sleep(ctx, backoff(failures)) {
				break
			}
			continue
		}
		if failures > 0 {
			w.log.Info("consul load report watch recovered", "failures", failures)
			failures = 0
		}
		next := nextIndex(index, lastIndex(meta))
		if next != index || w.loads.Load() == nil {
			w.loads.Store(w.parse(pairs, w.loads.Load()))
		}
		index = next
	}
	return ctx.Err()
}

// parse builds the next CatalogLoads, reusing prev's parse of unchanged
// values (so their first-seen time stays).
func (w *LoadWatcher) parse(pairs api.KVPairs, prev *CatalogLoads) *CatalogLoads {
	now := time.Now()
	out := &CatalogLoads{prefix: w.cfg.Prefix, maxReportAge: w.cfg.MaxReportAge, reports: make(map[string]parsedReport, len(pairs))}
	for _, p := range pairs {
		if p == nil || strings.HasSuffix(p.Key, "/") {
			continue
		}
		if prev != nil {
			if old, ok := prev.reports[p.Key]; ok && bytes.Equal(old.value, p.Value) {
				out.reports[p.Key] = old
				continue
			}
		}
		r, err := ParseLoadReport(p.Value)
		out.reports[p.Key] = parsedReport{value: p.Value, report: r, err: err, seen: now}
	}
	return out
}

// NewCatalogLoads builds a CatalogLoads from KV values by key, read now; for
// tests and for callers that read the reports themselves.
func NewCatalogLoads(prefix string, maxReportAge time.Duration, values map[string][]byte, now time.Time) *CatalogLoads {
	out := &CatalogLoads{prefix: cleanPrefix(prefix), maxReportAge: cmpOr(maxReportAge, DefaultMaxReportAge), reports: make(map[string]parsedReport, len(values))}
	for k, v := range values {
		r, err := ParseLoadReport(v)
		out.reports[k] = parsedReport{value: v, report: r, err: err, seen: now}
	}
	return out
}

// lastIndex is the index a read returned, 0 without meta.
func lastIndex(m *api.QueryMeta) uint64 {
	if m == nil {
		return 0
	}
	return m.LastIndex
}
