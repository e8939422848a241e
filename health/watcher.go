package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of WatcherConfig.
const (
	// DefaultMaxReportAge is the age beyond which a load report is stale.
	DefaultMaxReportAge = 30 * time.Second
	// DefaultMaxStaleness is how long data may go unsynced before not-ready.
	DefaultMaxStaleness = 5 * time.Minute
	// DefaultMaxWaitTime caps the wait of one blocking query.
	DefaultMaxWaitTime = time.Minute
	// DefaultMinInterval is the least time between two queries of one loop.
	DefaultMinInterval = 100 * time.Millisecond
)

// Error backoff bounds: the first retry comes after 100-200 ms, the pause
// doubles per failure, and it never exceeds 10 s.
const (
	minBackoff = 200 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// ServiceConfig is one Consul service farmdns answers for.
type ServiceConfig struct {
	// Name is the Consul service name.
	Name string `yaml:"name"`
	// DefaultCapacity applies to instances that report no capacity; 0 means unlimited.
	DefaultCapacity int64 `yaml:"default_capacity"`
}

// WatcherConfig configures a Watcher. Zero durations take the defaults.
type WatcherConfig struct {
	// Services are the Consul services to watch.
	Services []ServiceConfig `yaml:"services"`
	// LoadPrefix is the KV prefix of load reports (default DefaultLoadPrefix).
	LoadPrefix string `yaml:"load_prefix"`
	// MaxReportAge is the age beyond which a load report is stale (default 30 s).
	MaxReportAge time.Duration `yaml:"max_report_age"`
	// MaxStaleness is how long the data may go without a successful Consul
	// read before Ready reports false (default 5 min). Data is served regardless.
	MaxStaleness time.Duration `yaml:"max_staleness"`
	// AllowStale lets any Consul server answer; nil means true. Wire it from
	// ConsulConfig.AllowStale.
	AllowStale *bool `yaml:"-"`
	// WaitTime bounds each blocking query (default min(1 min, MaxStaleness/4),
	// so that a quiet but healthy Consul still refreshes the sync status well
	// within MaxStaleness).
	WaitTime time.Duration `yaml:"-"`
	// MinInterval is the least time between two queries of one loop (default
	// 100 ms): a busy data set is read at most ten times a second, and a
	// change still shows within a second.
	MinInterval time.Duration `yaml:"-"`
	// StateFile, if set, is where the last good catalog and load reports are
	// kept, so that a restart while Consul is unreachable starts from them.
	StateFile string `yaml:"state_file"`
	// Datacenter names the Consul datacenter read (empty: the agent's own);
	// a state file written for another one is not trusted. Wire it from
	// ConsulConfig.Datacenter.
	Datacenter string `yaml:"-"`
}

// withDefaults fills zero fields and validates; errors name the YAML keys.
func (c WatcherConfig) withDefaults() (WatcherConfig, error) {
	var errs []error
	if c.LoadPrefix == "" {
		c.LoadPrefix = DefaultLoadPrefix
	}
	if err := CheckLoadPrefix(c.LoadPrefix); err != nil {
		errs = append(errs, fmt.Errorf("load_prefix: %w", err))
	}
	c.LoadPrefix = cleanPrefix(c.LoadPrefix)
	c.MaxReportAge = cmpOr(c.MaxReportAge, DefaultMaxReportAge)
	c.MaxStaleness = cmpOr(c.MaxStaleness, DefaultMaxStaleness)
	c.WaitTime = cmpOr(c.WaitTime, min(DefaultMaxWaitTime, c.MaxStaleness/4))
	c.MinInterval = cmpOr(c.MinInterval, DefaultMinInterval)
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"max_report_age", c.MaxReportAge}, {"max_staleness", c.MaxStaleness}, {"wait_time", c.WaitTime}, {"min_interval", c.MinInterval}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %v is negative", d.key, d.v))
		}
	}
	if c.WaitTime > c.MaxStaleness/2 {
		errs = append(errs, fmt.Errorf("wait_time: %v exceeds half of max_staleness %v", c.WaitTime, c.MaxStaleness))
	}
	seen := map[string]bool{}
	c.Services = append([]ServiceConfig(nil), c.Services...) // never alias the caller's slice
	for i, s := range c.Services {
		if err := CheckServiceName(s.Name); err != nil {
			errs = append(errs, fmt.Errorf("services[%d].name: %w", i, err))
		} else if seen[s.Name] {
			errs = append(errs, fmt.Errorf("services[%d].name: %q listed twice", i, s.Name))
		}
		seen[s.Name] = true
		if s.DefaultCapacity < 0 {
			errs = append(errs, fmt.Errorf("services[%d].default_capacity: %d is negative", i, s.DefaultCapacity))
		}
	}
	return c, errors.Join(errs...)
}

// CheckServiceName says why name cannot be watched as a Consul service, if
// it cannot: it goes into the path of the HTTP API's URL.
func CheckServiceName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case strings.ContainsAny(name, "/?#"):
		return fmt.Errorf("%q is not a Consul service name", name)
	}
	return nil
}

// CheckLoadPrefix says why p cannot be the KV prefix of load reports, if it
// cannot; "" stands for DefaultLoadPrefix.
func CheckLoadPrefix(p string) error {
	if p != "" && cleanPrefix(p) == "" {
		return errors.New("must not be the KV root")
	}
	return nil
}

func cleanPrefix(p string) string {
	if p == "" {
		p = DefaultLoadPrefix
	}
	return strings.Trim(path.Clean("/"+p), "/")
}

func cmpOr(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// Watcher keeps an up-to-date Snapshot of the watched services from Consul
// blocking queries: one long-poll loop per service and one over the KV load
// prefix. Readers call Snapshot, an atomic load.
type Watcher struct {
	cfg     WatcherConfig
	client  *api.Client
	log     *slog.Logger
	running atomic.Bool
	snap    atomic.Pointer[Snapshot]
	status  atomic.Pointer[Status]

	stateFile atomic.Pointer[StateFileStatus]
	restored  *savedState // read from StateFile by NewWatcher; nil if none

	reportLag prometheus.Histogram
}

// NewWatcher validates cfg and returns a watcher serving an empty snapshot
// until Run has heard from Consul. It starts nothing.
func NewWatcher(cfg WatcherConfig, client *api.Client, log *slog.Logger) (*Watcher, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	if client == nil {
		return nil, errors.New("health: nil Consul client")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{cfg: cfg, client: client, log: log, reportLag: newReportLag()}
	st := &Status{MaxStaleness: cfg.MaxStaleness, DataSets: w.initialDataSets()}
	// The saved state is read here, not in Run, so that the first snapshot
	// already holds it: a server started without Consul answers its pools
	// from its very first query.
	b := newBuilder(&w.cfg, log)
	if w.restored = w.loadState(); w.restored != nil {
		w.restored.fill(b)
		st.Restored = w.restored.saved
	}
	snap, _ := b.build(0, time.Now())
	w.snap.Store(snap)
	w.status.Store(st)
	return w, nil
}

func (w *Watcher) initialDataSets() []DataSetStatus {
	ds := []DataSetStatus{{Kind: DataSetKV, Name: w.cfg.LoadPrefix}}
	names := make([]string, 0, len(w.cfg.Services))
	for _, s := range w.cfg.Services {
		names = append(names, s.Name)
	}
	slices.Sort(names)
	for _, n := range names {
		ds = append(ds, DataSetStatus{Kind: DataSetService, Name: n})
	}
	return ds
}

// Snapshot returns the current snapshot. It never blocks and never calls Consul.
func (w *Watcher) Snapshot() *Snapshot { return w.snap.Load() }

// Status returns the current sync status and counters.
func (w *Watcher) Status() *Status { return w.status.Load() }

// Ready reports whether the data is fresh enough (see Status.Ready).
func (w *Watcher) Ready() (bool, string) { return w.status.Load().Ready(time.Now()) }

// update is what a loop tells the builder after each query.
type update struct {
	set     int // index into Status.DataSets
	at      time.Time
	index   uint64
	err     error
	changed bool
	kv      []kvPair   // for the KV set, when changed
	ins     []instance // for a service set, when changed
}

// Run watches Consul until ctx is done, then returns nil. It may be called once.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("health: watcher already running")
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	st := *w.status.Load()
	st.Started = time.Now()
	st.DataSets = append([]DataSetStatus(nil), st.DataSets...)
	w.status.Store(&st)

	staleTimer := time.NewTimer(time.Hour)
	staleTimer.Stop()
	defer staleTimer.Stop()
	b := newBuilder(&w.cfg, w.log)
	restored := w.restored
	if restored != nil {
		restored.fill(b)
		w.rebuild(b, staleTimer) // arms the timer for the restored reports
	}
	b.reportLag = func(d time.Duration) { w.reportLag.Observe(d.Seconds()) }
	sv := w.newSaver()
	defer sv.close(b)

	updates := make(chan update, len(st.DataSets))
	for i, d := range st.DataSets {
		l := &loop{w: w, set: i, kind: d.Kind, name: d.Name, out: updates}
		if restored != nil {
			// Never empty a restored data set on the word of a Consul
			// that has no leader (see query).
			l.prevKV, l.prevIns = restored.kv, restored.instances[d.Name]
		}
		wg.Go(func() { l.run(ctx) })
	}
	for {
		var u update
		select {
		case <-ctx.Done():
			return nil
		case <-staleTimer.C:
			w.rebuild(b, staleTimer)
			continue
		case <-sv.timer():
			sv.save(b)
			continue
		case u = <-updates:
		}
		// Apply everything already queued before rebuilding once.
		rebuild := w.apply(b, u)
	drain:
		for {
			select {
			case u = <-updates:
				rebuild = w.apply(b, u) || rebuild
			default:
				break drain
			}
		}
		if rebuild {
			w.rebuild(b, staleTimer)
			sv.changed()
		}
	}
}

// apply records u in the status and the builder; it reports whether the
// snapshot must be rebuilt.
func (w *Watcher) apply(b *builder, u update) bool {
	st := *w.status.Load()
	st.DataSets = append([]DataSetStatus(nil), st.DataSets...)
	d := &st.DataSets[u.set]
	if u.err != nil {
		d.LastError, d.LastErrorAt, d.Failing = u.err, u.at, true
		d.Errors++
	} else {
		d.LastSuccess, d.Index, d.Failing = u.at, u.index, false
	}
	if u.changed {
		switch d.Kind {
		case DataSetKV:
			b.setKV(u.kv)
		case DataSetService:
			b.instances[d.Name] = u.ins
		}
	}
	st.MalformedTotal, st.InvalidAddressTotal = b.malformedTotal, b.invalidAddressTotal
	w.status.Store(&st)
	return u.changed
}

// rebuild builds a snapshot and publishes it if its content differs from the
// current one, then arms the timer for the next report to turn stale.
func (w *Watcher) rebuild(b *builder, staleTimer *time.Timer) {
	old := w.snap.Load()
	now := time.Now()
	next, nextStale := b.build(old.generation+1, now)
	if !nextStale.IsZero() {
		staleTimer.Reset(nextStale.Sub(now) + time.Millisecond)
	}
	st := *w.status.Load()
	st.MalformedTotal, st.InvalidAddressTotal = b.malformedTotal, b.invalidAddressTotal
	if next.sameContent(old) {
		w.status.Store(&st)
		return
	}
	st.Publishes++
	w.status.Store(&st)
	w.snap.Store(next)
	close(old.superseded)
}

// loop is one blocking-query loop over one data set.
type loop struct {
	w    *Watcher
	set  int
	kind DataSetKind
	name string
	out  chan<- update

	failing   bool
	prevKV    []kvPair
	prevIns   []instance
	have      bool
	heldIndex uint64        // the Consul index of prevKV or prevIns
	cost      time.Duration // reading and reducing the last answer (see readCost)
}

// costFactor bounds a loop's share of a core: after an answer that took d to
// read and reduce, the next query waits at least costFactor×d, so a loop
// over a busy data set spends at most 1/(costFactor+1) of its time (and so
// of a core) on it, however many instances the data set holds. With 50,000
// load reports changing all the time that is about one read a second instead
// of ten (health/MEASURED.md); a small data set keeps MinInterval.
const costFactor = 4

// pause returns the least time between two queries of a loop whose last
// answer cost cost to read and reduce. It never exceeds a quarter of
// maxReportAge (unless MinInterval does), so that on a starved machine the
// loads still arrive well before they turn stale.
func pause(minInterval, cost, maxReportAge time.Duration) time.Duration {
	return max(minInterval, min(costFactor*cost, maxReportAge/4))
}

func (l *loop) run(ctx context.Context) {
	var (
		index    uint64
		failures int
		last     time.Time
	)
	for ctx.Err() == nil {
		// Rate limit: however often Consul answers, query at most once per
		// MinInterval, and less often when the answers are costly to read.
		if wait := pause(l.w.cfg.MinInterval, l.cost, l.w.cfg.MaxReportAge) - time.Since(last); wait > 0 && !sleep(ctx, wait) {
			return
		}
		last = time.Now()
		u, newIndex, err := l.query(ctx, index)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			l.logFailure(err)
			if !l.send(ctx, update{set: l.set, at: time.Now(), err: err}) {
				return
			}
			// Resync from scratch after an error: a Consul that restarted has
			// lower indexes, and waiting on the old one would stall for a whole
			// WaitTime. The backoff already bounds the query rate.
			index = 0
			if !sleep(ctx, backoff(failures)) {
				return
			}
			continue
		}
		failures = 0
		if l.failing {
			l.failing = false
			l.w.log.Info("consul read recovered", "set", string(l.kind), "name", l.name)
		}
		index = nextIndex(index, newIndex)
		if !l.send(ctx, u) {
			return
		}
	}
}

// nextIndex applies Consul's rules for the index to wait on next, given the
// one just waited on and the one Consul returned.
func nextIndex(waited, got uint64) uint64 {
	switch {
	case got < waited: // went backwards (a restore, a restarted Consul): resync
		return 0
	case got == 0 && waited == 0: // never wait on 0 twice in a row
		return 1
	default:
		return got
	}
}

// errFilteredByACLs refuses an answer filtered by ACLs: a token without
// read access gets an empty or partial answer, not an error, and taking it
// would empty the pool.
var errFilteredByACLs = errors.New("consul filtered the results by ACLs: the token lacks read access (service:read and node:read, or key_prefix read on the load prefix)")

// query runs one blocking query and compares the answer with the previous one.
func (l *loop) query(ctx context.Context, index uint64) (update, uint64, error) {
	cfg := &l.w.cfg
	stale := cfg.AllowStale == nil || *cfg.AllowStale
	if l.kind == DataSetService && l.have && index > 0 {
		meta, err := l.waitForChange(ctx, index, stale)
		switch {
		case err != nil:
			return update{}, 0, l.wrap(consulError(err))
		case meta.ResultsFilteredByACLs:
			return update{}, 0, l.wrap(errFilteredByACLs)
		case meta.LastIndex == index: // the wait timed out: nothing to read
			return update{set: l.set, at: time.Now(), index: index}, index, nil
		case meta.LastIndex < index: // went backwards: read it all, without waiting
			index = 0
		}
	}
	qctx, cancel := l.queryContext(ctx)
	defer cancel()
	u, meta, empty, err := l.read(qctx, index, stale)
	if err == nil && stale && l.have && meta.LastIndex < l.heldIndex && u.changed {
		// An answer older than the data held comes from a server behind
		// the one that answered before: a follower a little behind, or a
		// server rebuilt from an empty data dir that serves stale reads
		// before it has restored the leader's snapshot (an empty catalog
		// at index 1, with a known leader). Its data may lack targets; ask
		// the leader instead. A state the leader confirms (a restore) is taken.
		u, meta, empty, err = l.read(qctx, 0, false)
	}
	if err != nil {
		return update{}, 0, l.wrap(consulError(err))
	}
	if meta.ResultsFilteredByACLs {
		return update{}, 0, l.wrap(errFilteredByACLs)
	}
	if empty && !meta.KnownLeader {
		// A server that lost (or has not yet found) its leader may hold no
		// data at all; never empty a pool on its word.
		return update{}, 0, l.wrap(errors.New("consul answered with no data and no known leader; keeping the last data"))
	}
	if u.changed {
		l.have, l.prevKV, l.prevIns = true, u.kv, u.ins
	} else {
		u.kv, u.ins = nil, nil
	}
	l.heldIndex = meta.LastIndex
	u.at, u.index = time.Now(), meta.LastIndex
	return u, meta.LastIndex, nil
}

// queryContext bounds one query: Consul adds up to WaitTime/16 of jitter to
// the wait; beyond that plus a margin the connection is presumed dead.
func (l *loop) queryContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, l.w.cfg.WaitTime+l.w.cfg.WaitTime/16+5*time.Second)
}

// matchNothing is a Consul filter that no instance passes.
const matchNothing = `Service.ID == "" and Service.ID != ""`

// waitForChange waits, as a blocking query on index, until the service
// changes or the wait times out, without reading its instances: an answer
// filtered to nothing carries the index of the whole service
// (TestWaitForChangeIndex). A quiet service's wait times out every
// WaitTime, and Consul then sends the whole answer again, unchanged: at
// 50,000 instances 45 MB of JSON, about a second of CPU to decode each
// minute (health/MEASURED.md, "Idle"). The instances are read only when
// the index moves.
func (l *loop) waitForChange(ctx context.Context, index uint64, stale bool) (*api.QueryMeta, error) {
	ctx, cancel := l.queryContext(ctx)
	defer cancel()
	opts := (&api.QueryOptions{
		WaitIndex:  index,
		WaitTime:   l.w.cfg.WaitTime,
		AllowStale: stale,
		Filter:     matchNothing,
	}).WithContext(ctx)
	start := time.Now()
	_, meta, err := healthService(l.w.client, l.name, opts)
	if err == nil {
		l.cost = readCost(time.Since(start), meta.RequestTime)
	}
	return meta, err
}

// read runs one query and compares its answer with the data held; empty
// reports an answer that would empty a data set that has data.
func (l *loop) read(ctx context.Context, index uint64, stale bool) (u update, meta *api.QueryMeta, empty bool, err error) {
	cfg := &l.w.cfg
	opts := (&api.QueryOptions{
		WaitIndex:  index,
		WaitTime:   cfg.WaitTime,
		AllowStale: stale,
	}).WithContext(ctx)
	u = update{set: l.set}
	start := time.Now()
	switch l.kind {
	case DataSetKV:
		var pairs api.KVPairs
		pairs, meta, err = l.w.client.KV().List(cfg.LoadPrefix+"/", opts)
		if err == nil {
			kv := kvFromPairs(pairs)
			u.changed = !l.have || !kvEqual(kv, l.prevKV)
			empty = len(kv) == 0 && len(l.prevKV) > 0
			u.kv = kv
		}
	case DataSetService:
		var entries []healthEntry
		entries, meta, err = healthService(l.w.client, l.name, opts)
		if err == nil {
			ins := instancesFromHealth(entries, cfg.LoadPrefix, l.name)
			u.changed = !l.have || !instancesEqual(ins, l.prevIns)
			empty = len(ins) == 0 && len(l.prevIns) > 0
			u.ins = ins
		}
	}
	if err == nil {
		l.cost = readCost(time.Since(start), meta.RequestTime)
	}
	return u, meta, empty, err
}

// readCost is the part of a query's time spent after Consul answered
// (reading the body, decoding, reducing), given the query's whole time and
// the time to the answer's headers, which holds the blocking wait.
func readCost(total, toHeaders time.Duration) time.Duration {
	return max(0, total-toHeaders)
}

func (l *loop) wrap(err error) error {
	return fmt.Errorf("health: %s %s: %w", l.kind, l.name, err)
}

// consulError adds a hint to the errors an operator can fix.
func consulError(err error) error {
	var se api.StatusError
	if errors.As(err, &se) && se.Code == 403 {
		return fmt.Errorf("consul rejected the ACL token (check consul.token_file or CONSUL_HTTP_TOKEN): %w", err)
	}
	return fmt.Errorf("consul query: %w", err)
}

// logFailure logs the first failure of a run of failures at warning level
// and the rest at debug level: every failure is counted in Status anyway.
func (l *loop) logFailure(err error) {
	if l.failing {
		l.w.log.Debug("consul read failed again", "set", string(l.kind), "name", l.name, "err", err)
		return
	}
	l.failing = true
	l.w.log.Warn("consul read failed; serving the last good data", "set", string(l.kind), "name", l.name, "err", err)
}

func (l *loop) send(ctx context.Context, u update) bool {
	select {
	case l.out <- u:
		return true
	case <-ctx.Done():
		return false
	}
}

// backoff returns the pause after the n-th consecutive failure: exponential
// from minBackoff to maxBackoff, with the upper half jittered so that many
// farmdns servers do not retry in step.
func backoff(n int) time.Duration {
	d := maxBackoff
	if n < 16 {
		d = min(maxBackoff, minBackoff<<(n-1))
	}
	return d/2 + rand.N(d/2+1)
}

// sleep waits for d or until ctx is done; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
