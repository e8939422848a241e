package health

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// CatalogWatcherConfig tunes a CatalogWatcher; zero values take defaults.
type CatalogWatcherConfig struct {
	// WaitTime bounds each blocking query (default min(1m,
	// MaxStaleness/4), so that a quiet catalog still confirms the view well
	// within MaxStaleness).
	WaitTime time.Duration
	// MaxStaleness is how long the view may go unconfirmed by Consul
	// before Status reports not ready (default DefaultMaxStaleness).
	MaxStaleness time.Duration
	// MinInterval is the least time between two rebuilds of the view, and
	// between two queries of one loop (default DefaultMinInterval).
	MinInterval time.Duration
	// AllowStale lets any server answer (Consul's ?stale).
	AllowStale bool
	// AskWait bounds how long Await waits for a newly asked service to
	// load (default 1s).
	AskWait time.Duration
	// IdleTimeout stops the watch of a service nobody asked for this long
	// (default 10m).
	IdleTimeout time.Duration
	// MaxWatches is the most services with a blocking query of their own
	// (default 128). Each holds an HTTP connection to the agent, and Consul
	// refuses a client more than limits.http_max_conns_per_client (200 by
	// default). Services asked beyond it are polled: reread together,
	// without blocking, whenever a check or the service list changes.
	MaxWatches int
}

// CatalogWatcher keeps a Catalog view current while reading only what DNS
// clients ask for: two blocking queries hold the node list and the service
// list, and each service asked for gets its own blocking query on
// /v1/health/service/<name>, started by its first question (Ask) and stopped
// after IdleTimeout without one. Every change rebuilds the view from what
// the queries hold, without a request, and swaps it in.
//
// Its views are Partial: a listed service that nobody asked for is not in
// Services. Ask, then Await, before answering from one.
type CatalogWatcher struct {
	client *api.Client
	log    *slog.Logger
	cfg    CatalogWatcherConfig
	cat    atomic.Pointer[Catalog]
	stat   catalogStatus

	// watching is the running service watches by lower-case name, copied on
	// write so that Ask reads it without a lock.
	watching atomic.Pointer[map[string]*serviceWatch]
	changed  chan struct{} // a rebuild is due
	started  chan struct{} // closed when Run has set ctx
	ctx      context.Context

	mu       sync.Mutex
	nodes    []*api.Node // nil until the first read
	nodesIdx uint64
	services map[string][]string // nil until the first read
	svcIdx   uint64
	dc       string
	synced   chan struct{} // closed, and replaced, when a view is stored
	blocking int           // watches with their own blocking query
	pollWake chan struct{} // the poller has work; nil until the first polled service
	stale    atomic.Bool   // the catalog changed: every polled service is reread
	waiters  atomic.Int32  // questions in Await: the next rebuild does not wait
	timedOut atomic.Int64  // UnixNano of the last Await that timed out
}

// serviceWatch is one service's blocking query and what it last read.
type serviceWatch struct {
	name   string // as registered
	cancel context.CancelFunc
	polled bool         // read by the poller, not by its own blocking query
	asked  atomic.Int64 // UnixNano of the last question
	// Under the watcher's mu:
	entries []*api.ServiceEntry
	index   uint64
	loaded  bool
}

// NewCatalogWatcher returns a watcher; Run starts it.
func NewCatalogWatcher(cfg CatalogWatcherConfig, client *api.Client, log *slog.Logger) *CatalogWatcher {
	cfg.MaxStaleness = cmpOr(cfg.MaxStaleness, DefaultMaxStaleness)
	if cfg.WaitTime <= 0 {
		cfg.WaitTime = min(DefaultMaxWaitTime, cfg.MaxStaleness/4)
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.AskWait <= 0 {
		cfg.AskWait = time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 10 * time.Minute
	}
	if cfg.MaxWatches <= 0 {
		cfg.MaxWatches = 128
	}
	w := &CatalogWatcher{
		client: client, log: log, cfg: cfg,
		changed: make(chan struct{}, 1), started: make(chan struct{}), synced: make(chan struct{}),
	}
	w.watching.Store(&map[string]*serviceWatch{})
	return w
}

// Catalog returns the current view, or nil before the node and service
// lists are read.
func (w *CatalogWatcher) Catalog() *Catalog { return w.cat.Load() }

// Watching returns the lower-case names of the services watched now.
func (w *CatalogWatcher) Watching() []string {
	m := *w.watching.Load()
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Ask says a question reads service (lower case): its idle clock restarts,
// and its watch starts if it exists and is not watched yet. It is cheap
// when the service is watched already: every question calls it.
func (w *CatalogWatcher) Ask(service string) {
	if sw := (*w.watching.Load())[service]; sw != nil {
		now := time.Now().UnixNano()
		// Write the shared word only when it moved enough to matter.
		if now-sw.asked.Load() > int64(w.cfg.IdleTimeout/16) {
			sw.asked.Store(now)
		}
		return
	}
	cat := w.cat.Load()
	if cat == nil {
		return
	}
	if _, listed := cat.Listed[service]; !listed {
		// Not a service: no watch, or every mistyped name would cost
		// Consul a blocking query.
		return
	}
	w.startWatch(service)
}

// Await waits, at most AskWait, for a view in which every service in names
// is loaded (Catalog.Loaded), and returns it; nil if none came in time.
// For a while after a wait timed out (Consul slow or gone), it does not
// wait: each wait holds one of the DNS server's few readers, and a stream
// of questions for unloaded services would hold them all.
func (w *CatalogWatcher) Await(names []string) *Catalog {
	if cat := w.cat.Load(); cat != nil && loadedAll(cat, names) {
		return cat
	}
	if time.Now().UnixNano()-w.timedOut.Load() < int64(failFastFor*w.cfg.AskWait) {
		for _, n := range names {
			w.Ask(n) // its watch still starts, or goes on trying
		}
		return nil
	}
	// A waiting question holds one of the DNS server's readers: its view
	// is built at once, not after MinInterval.
	w.waiters.Add(1)
	defer w.waiters.Add(-1)
	t := time.NewTimer(w.cfg.AskWait)
	defer t.Stop()
	for {
		w.mu.Lock()
		synced := w.synced
		w.mu.Unlock()
		// Asked again at each new view: a watcher that had no view at the
		// first Ask (just started, after a reload) starts the watches now.
		for _, n := range names {
			w.Ask(n)
		}
		cat := w.cat.Load()
		if cat != nil && loadedAll(cat, names) {
			return cat
		}
		select {
		case <-synced:
		case <-t.C:
			w.timedOut.Store(time.Now().UnixNano())
			return nil
		}
	}
}

func loadedAll(cat *Catalog, names []string) bool {
	for _, n := range names {
		if !cat.Loaded(n) {
			return false
		}
	}
	return true
}

// Run watches until ctx is done and returns ctx's error.
func (w *CatalogWatcher) Run(ctx context.Context) error {
	w.ctx = ctx
	w.stat.start(time.Now(), w.cfg.MaxStaleness)
	close(w.started)
	go w.watch(ctx, "nodes", func(q *api.QueryOptions) (uint64, error) {
		nodes, m, err := w.client.Catalog().Nodes(q)
		if err == nil {
			err = catalogError("nodes", m, nil)
		}
		if err != nil {
			return 0, err
		}
		w.mu.Lock()
		w.nodes, w.nodesIdx = nodes, m.LastIndex
		w.mu.Unlock()
		return m.LastIndex, nil
	}, w.notify)
	go w.watch(ctx, "services", func(q *api.QueryOptions) (uint64, error) {
		names, m, err := w.client.Catalog().Services(q)
		if err == nil {
			err = catalogError("services", m, nil)
		}
		if err != nil {
			return 0, err
		}
		w.mu.Lock()
		w.services, w.svcIdx = names, m.LastIndex
		w.mu.Unlock()
		return m.LastIndex, nil
	}, w.changedAll)
	idle := time.NewTicker(max(w.cfg.IdleTimeout/4, 10*time.Millisecond))
	defer idle.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			w.stopAll()
			return ctx.Err()
		case <-idle.C:
			w.stopIdle()
			continue
		case <-w.changed:
		}
		if wait := w.cfg.MinInterval - time.Since(last); wait > 0 && w.waiters.Load() == 0 && !sleep(ctx, wait) {
			w.stopAll()
			return ctx.Err()
		}
		last = time.Now()
		if err := w.rebuild(); err != nil {
			w.stat.fail("view", err, time.Now())
			w.log.Warn("consul catalog view not rebuilt; serving the last good one", "err", err)
		} else if cat := w.cat.Load(); cat != nil {
			w.stat.ok("view", cat.Index, time.Now())
		}
	}
}

func (w *CatalogWatcher) notify() {
	select {
	case w.changed <- struct{}{}:
	default: // a rebuild is already due; it will see this change too
	}
}

// rebuild builds a view from what the queries hold and stores it.
func (w *CatalogWatcher) rebuild() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.nodes == nil || w.services == nil {
		return nil // not synced yet: no view rather than an empty one
	}
	cat := &Catalog{
		Index:    max(w.nodesIdx, w.svcIdx),
		Nodes:    make(map[string]*CatalogNode, len(w.nodes)),
		Services: make(map[string][]*CatalogInstance),
		Partial:  true,
		Listed:   make(map[string]struct{}, len(w.services)),
	}
	for _, n := range w.nodes {
		cat.Datacenter = strings.ToLower(n.Datacenter)
		cat.Nodes[strings.ToLower(n.Node)] = &CatalogNode{
			Name: n.Node, Address: n.Address, Meta: n.Meta,
			LANv4: n.TaggedAddresses["lan_ipv4"], LANv6: n.TaggedAddresses["lan_ipv6"],
		}
	}
	if cat.Datacenter == "" {
		if w.dc == "" {
			dc, err := agentDatacenter(w.client)
			if err != nil {
				return err
			}
			w.dc = dc
		}
		cat.Datacenter = w.dc
	}
	for name := range w.services {
		cat.Listed[strings.ToLower(name)] = struct{}{}
	}
	for key, sw := range *w.watching.Load() {
		if sw.loaded {
			cat.Index = max(cat.Index, sw.index)
			cat.Services[key] = catalogInstances(cat, sw.entries)
		}
	}
	cat.ParseIPs()
	w.cat.Store(cat)
	close(w.synced)
	w.synced = make(chan struct{})
	return nil
}

// startWatch starts the blocking query of service unless one runs.
func (w *CatalogWatcher) startWatch(service string) {
	select {
	case <-w.started:
	default:
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	old := *w.watching.Load()
	if old[service] != nil || w.ctx.Err() != nil {
		return
	}
	// Consul matches service names without regard to case; ask with the
	// name as registered.
	name := service
	for n := range w.services {
		if strings.EqualFold(n, service) {
			name = n
			break
		}
	}
	ctx, cancel := context.WithCancel(w.ctx)
	sw := &serviceWatch{name: name, cancel: cancel, polled: w.blocking >= w.cfg.MaxWatches}
	sw.asked.Store(time.Now().UnixNano())
	next := make(map[string]*serviceWatch, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[service] = sw
	w.watching.Store(&next)
	if sw.polled {
		w.startPoller()
		wake(w.pollWake)
		return
	}
	w.blocking++
	go w.watch(ctx, "service "+name, func(q *api.QueryOptions) (uint64, error) {
		entries, m, err := w.client.Health().Service(name, "", false, q)
		if err == nil {
			err = catalogError("service "+name, m, nil)
		}
		if err != nil {
			return 0, err
		}
		w.mu.Lock()
		sw.entries, sw.index, sw.loaded = entries, m.LastIndex, true
		w.mu.Unlock()
		return m.LastIndex, nil
	}, w.notify)
}

// stopIdle stops the watches nobody asked for in IdleTimeout.
func (w *CatalogWatcher) stopIdle() {
	cutoff := time.Now().Add(-w.cfg.IdleTimeout).UnixNano()
	w.mu.Lock()
	defer w.mu.Unlock()
	old := *w.watching.Load()
	next := make(map[string]*serviceWatch, len(old))
	for k, sw := range old {
		if sw.asked.Load() < cutoff {
			sw.cancel()
			if !sw.polled {
				w.blocking--
			}
			continue
		}
		next[k] = sw
	}
	if len(next) != len(old) {
		w.watching.Store(&next)
		w.notify()
	}
}

func (w *CatalogWatcher) stopAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, sw := range *w.watching.Load() {
		sw.cancel()
	}
	w.watching.Store(&map[string]*serviceWatch{})
	w.blocking = 0
}

// watch runs one blocking query loop and calls changed whenever its index
// moves (a returned query does not always mean a change; a moved index
// usually does).
func (w *CatalogWatcher) watch(ctx context.Context, name string, query func(*api.QueryOptions) (uint64, error), changed func()) {
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
		if failures > 0 {
			w.log.Info("consul catalog watch recovered", "watch", name, "failures", failures)
			failures = 0
		}
		w.stat.ok(name, got, time.Now())
		next := nextIndex(index, got)
		if next != index {
			changed()
		}
		index = next
	}
}

// changedAll says something in the catalog changed that polled services do
// not see by themselves: the view is rebuilt and they are reread.
func (w *CatalogWatcher) changedAll() {
	w.notify()
	w.stale.Store(true)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pollWake != nil {
		wake(w.pollWake)
	}
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default: // already due
	}
}

// startPoller starts, once, the loop that reads polled services and the
// blocking query that says when a check changed. Called under mu.
func (w *CatalogWatcher) startPoller() {
	if w.pollWake != nil {
		return
	}
	w.pollWake = make(chan struct{}, 1)
	go w.poll(w.ctx, w.pollWake)
	// Any check's change moves the checks table's index; the filter
	// matches nothing, so each return carries no checks, only the index.
	go w.watch(w.ctx, "checks", func(q *api.QueryOptions) (uint64, error) {
		q.Filter = `CheckID == "farmdns-none"`
		_, m, err := w.client.Health().State(api.HealthAny, q)
		if err != nil {
			return 0, err
		}
		return m.LastIndex, nil
	}, w.changedAll)
}

// failFastFor is how many AskWaits Await answers at once after a wait
// timed out.
const failFastFor = 5

// pollInterval is the least time between two rereads of every polled
// service: under churn they cost Consul a request per service per second.
const pollInterval = time.Second

// poll reads the polled services when woken: every one after a change in
// the catalog, else only those not loaded yet (newly asked).
func (w *CatalogWatcher) poll(ctx context.Context, wakeup <-chan struct{}) {
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-wakeup:
		}
		// Rereading every polled service is rate limited; reading those
		// just asked for, which a question waits on, is not.
		if wait := max(w.cfg.MinInterval, pollInterval) - time.Since(last); wait > 0 && w.stale.Load() && !sleep(ctx, wait) {
			return
		}
		all := w.stale.Swap(false)
		if all {
			last = time.Now()
		}
		var todo []*serviceWatch
		w.mu.Lock()
		for _, sw := range *w.watching.Load() {
			if sw.polled && (all || !sw.loaded) {
				todo = append(todo, sw)
			}
		}
		w.mu.Unlock()
		if failed := w.readPolled(ctx, todo); failed > 0 {
			// Those asked for are waited on: retry soon, not at the next
			// change.
			time.AfterFunc(backoff(1), func() { wake(w.pollWake) })
		}
		w.notify()
	}
}

// readPolled reads services without blocking, a few at a time so as not to
// run into the agent's connection limit; it returns how many failed.
func (w *CatalogWatcher) readPolled(ctx context.Context, todo []*serviceWatch) int {
	work := make(chan *serviceWatch)
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range min(8, len(todo)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sw := range work {
				q := (&api.QueryOptions{AllowStale: w.cfg.AllowStale}).WithContext(ctx)
				entries, m, err := w.client.Health().Service(sw.name, "", false, q)
				if err == nil {
					err = catalogError("service "+sw.name, m, nil)
				}
				if err != nil {
					if ctx.Err() == nil {
						w.log.Warn("consul catalog read failed", "service", sw.name, "err", err)
						w.stale.Store(true) // reread all: it may have missed a change
						failed.Add(1)
					}
					continue
				}
				w.mu.Lock()
				sw.entries, sw.index, sw.loaded = entries, m.LastIndex, true
				w.mu.Unlock()
			}
		}()
	}
	for _, sw := range todo {
		work <- sw
	}
	close(work)
	wg.Wait()
	return int(failed.Load())
}
