package health

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// CatalogWatcherConfig tunes a CatalogWatcher; zero values take defaults.
type CatalogWatcherConfig struct {
	// WaitTime bounds each blocking query (default 5m, Consul's maximum
	// is 10m).
	WaitTime time.Duration
	// MinInterval is the least time between two rebuilds of the view, and
	// between two queries of one loop (default DefaultMinInterval).
	MinInterval time.Duration
	// AllowStale lets any server answer (Consul's ?stale).
	AllowStale bool
	// MaxStaleness is how long the view may go unconfirmed by Consul
	// before Status reports not ready (default DefaultMaxStaleness).
	MaxStaleness time.Duration
}

// CatalogWatcher keeps a Catalog view current. Three blocking queries, on
// the node list, the service list and every check, say when something
// changed; the view is then read again whole and swapped in.
//
// This first version rereads every service on each change, one request per
// service; watching only the services DNS clients ask for is the next step
// for catalogs of thousands of services.
type CatalogWatcher struct {
	client *api.Client
	log    *slog.Logger
	cfg    CatalogWatcherConfig
	cat    atomic.Pointer[Catalog]
	stat   catalogStatus
}

// NewCatalogWatcher returns a watcher; Run starts it.
func NewCatalogWatcher(cfg CatalogWatcherConfig, client *api.Client, log *slog.Logger) *CatalogWatcher {
	if cfg.WaitTime <= 0 {
		cfg.WaitTime = 5 * time.Minute
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	cfg.MaxStaleness = cmpOr(cfg.MaxStaleness, DefaultMaxStaleness)
	return &CatalogWatcher{client: client, log: log, cfg: cfg}
}

// Catalog returns the current view, or nil before the first read.
func (w *CatalogWatcher) Catalog() *Catalog { return w.cat.Load() }

// Run watches until ctx is done and returns ctx's error.
func (w *CatalogWatcher) Run(ctx context.Context) error {
	w.stat.start(time.Now(), w.cfg.MaxStaleness)
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default: // a rebuild is already due; it will see this change too
		}
	}
	watches := map[string]func(*api.QueryOptions) (uint64, error){
		"nodes": func(q *api.QueryOptions) (uint64, error) {
			_, m, err := w.client.Catalog().Nodes(q)
			return lastIndex(m), err
		},
		"services": func(q *api.QueryOptions) (uint64, error) {
			_, m, err := w.client.Catalog().Services(q)
			return lastIndex(m), err
		},
		"checks": func(q *api.QueryOptions) (uint64, error) {
			_, m, err := w.client.Health().State(api.HealthAny, q)
			return lastIndex(m), err
		},
	}
	for name, query := range watches {
		go w.watch(ctx, name, query, notify)
	}
	notify() // the first read does not wait for a change
	failures := 0
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
		if wait := w.cfg.MinInterval - time.Since(last); wait > 0 && !sleep(ctx, wait) {
			return ctx.Err()
		}
		last = time.Now()
		cat, err := w.read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			w.stat.fail("view", err, time.Now())
			if failures == 1 {
				w.log.Warn("consul catalog read failed; serving the last good view", "err", err)
			}
			if !sleep(ctx, backoff(failures)) {
				return ctx.Err()
			}
			notify()
			continue
		}
		if failures > 0 {
			w.log.Info("consul catalog read recovered", "failures", failures)
			failures = 0
		}
		w.cat.Store(cat)
		w.stat.ok("view", cat.Index, time.Now())
	}
}

func (w *CatalogWatcher) read(ctx context.Context) (*Catalog, error) {
	// A whole read of a large catalog takes a while, but not minutes.
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return readCatalog(rctx, w.client, w.cfg.AllowStale)
}

// watch runs one blocking query loop and calls notify whenever its index
// moves (a returned query does not always mean a change; a moved index
// usually does).
func (w *CatalogWatcher) watch(ctx context.Context, name string, query func(*api.QueryOptions) (uint64, error), notify func()) {
	var index uint64
	failures := 0
	var last time.Time
	for ctx.Err() == nil {
		if wait := w.cfg.MinInterval - time.Since(last); wait > 0 && !sleep(ctx, wait) {
			return
		}
		last = time.Now()
		qctx, cancel := context.WithTimeout(ctx, w.cfg.WaitTime+w.cfg.WaitTime/16+5*time.Second)
		got, err := query((&api.QueryOptions{WaitIndex: index, WaitTime: w.cfg.WaitTime, AllowStale: w.cfg.AllowStale}).WithContext(qctx))
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			w.stat.fail(name, err, time.Now())
			if failures == 1 {
				w.log.Warn("consul catalog watch failed", "watch", name, "err", fmt.Errorf("health: watch %s: %w", name, err))
			}
			index = 0 // a restarted Consul has lower indexes
			if !sleep(ctx, backoff(failures)) {
				return
			}
			continue
		}
		failures = 0
		w.stat.ok(name, got, time.Now())
		next := nextIndex(index, got)
		if next != index {
			notify()
		}
		index = next
	}
}

func lastIndex(m *api.QueryMeta) uint64 {
	if m == nil {
		return 0
	}
	return m.LastIndex
}
