package health

import (
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// HealthState is the aggregate of an instance's checks, node checks included,
// maintenance checks excluded (those make the target Draining instead).
type HealthState uint8

const (
	// HealthPassing means every check passes.
	HealthPassing HealthState = iota
	// HealthWarning means no check is critical but at least one warns. The
	// target is still healthy; the state is reported so it can be seen.
	HealthWarning
	// HealthCritical means at least one check is critical (or has a status
	// Consul did not define, which is treated as critical to fail safe).
	HealthCritical
)

// String returns Consul's name for the state.
func (h HealthState) String() string {
	switch h {
	case HealthPassing:
		return "passing"
	case HealthWarning:
		return "warning"
	default:
		return "critical"
	}
}

// LoadState says how much a target's Load can be trusted.
type LoadState uint8

const (
	// LoadUnknown means there is no report, in KV or in service meta.
	LoadUnknown LoadState = iota
	// LoadKnown means Connections is current.
	LoadKnown
	// LoadStale means the KV report is older than the maximum report age.
	// Connections holds the last reported value; Pool.Connections estimates
	// instead. The target stays eligible.
	LoadStale
	// LoadMalformed means the KV value or service meta could not be parsed.
	// It is unknown load, distinguished so it can be counted and found.
	LoadMalformed
)

// String returns a lower-case name for metrics labels and logs.
func (s LoadState) String() string {
	switch s {
	case LoadKnown:
		return "known"
	case LoadStale:
		return "stale"
	case LoadMalformed:
		return "malformed"
	default:
		return "unknown"
	}
}

// LoadSource says where a target's connection count came from.
type LoadSource uint8

const (
	// SourceNone means no source supplied a connection count.
	SourceNone LoadSource = iota
	// SourceKV is a load report in Consul KV (the primary source).
	SourceKV
	// SourceMeta is the service meta key "connections" (the fallback).
	SourceMeta
)

// String returns a lower-case name for logs.
func (s LoadSource) String() string {
	switch s {
	case SourceKV:
		return "kv"
	case SourceMeta:
		return "meta"
	default:
		return "none"
	}
}

// Load is what farmdns knows about a target's connections.
type Load struct {
	// State says whether Connections can be used as is.
	State LoadState
	// Source is where Connections and Accepted came from.
	Source LoadSource
	// Connections is the reported number of open connections (0 unless
	// State is LoadKnown or LoadStale).
	Connections int64
	// Accepted is the reporter's cumulative accepted count, carried through
	// as reported: it drops to zero when the reporter restarts.
	Accepted int64
	// Capacity is the resolved capacity: KV report, else service meta
	// "capacity", else the service's configured default; 0 means unlimited.
	Capacity int64
	// Updated is the report's own time stamp (KV reports only), or when
	// farmdns first saw the report if the stamp is later (a reporter's
	// clock ahead): a report's age runs from it.
	Updated time.Time
}

// Known reports whether Connections is current.
func (l Load) Known() bool { return l.State == LoadKnown }

// Target is one Consul service instance. Its Tags and Meta are shared with
// every reader of the snapshot and must not be modified.
type Target struct {
	// Node is the Consul node name.
	Node string
	// ServiceID is the Consul service ID, unique on its node.
	ServiceID string
	// Address is the service address, falling back to the node address.
	Address netip.Addr
	// Port is the service port.
	Port uint16
	// Tags are the service tags.
	Tags []string
	// Meta is the service meta.
	Meta map[string]string
	// Health aggregates the instance's and its node's checks.
	Health HealthState
	// Draining is set when the node or the service is in Consul maintenance
	// mode: never hand the target out, but its connections still count.
	Draining bool
	// Load is the target's connection count and capacity.
	Load Load
}

// Eligible reports whether the target may be handed out: healthy (passing or
// warning) and not draining. A stale or unknown load does not exclude it.
func (t *Target) Eligible() bool { return !t.Draining && t.Health != HealthCritical }

func (t *Target) equal(u *Target) bool {
	return t.Node == u.Node && t.ServiceID == u.ServiceID && t.Address == u.Address &&
		t.Port == u.Port && t.Health == u.Health && t.Draining == u.Draining &&
		t.Load == u.Load && slices.Equal(t.Tags, u.Tags) && mapsEqual(t.Meta, u.Meta)
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// PoolCounts summarises a pool for metrics.
type PoolCounts struct {
	// Targets is len(Pool.Targets()).
	Targets int
	// Passing, Warning and Critical count targets by Health.
	Passing, Warning, Critical int
	// Draining counts targets in maintenance mode.
	Draining int
	// LoadKnown, LoadStale, LoadUnknown and LoadMalformed count targets by Load.State.
	LoadKnown, LoadStale, LoadUnknown, LoadMalformed int
	// InvalidAddress counts instances left out because their address is not an IP.
	InvalidAddress int
}

// Pool is one watched Consul service: its targets and their loads.
type Pool struct {
	name            string
	synced          bool
	defaultCapacity int64
	targets         []Target
	counts          PoolCounts
	mean            float64 // mean Connections over LoadKnown targets
	haveMean        bool
}

// Name returns the Consul service name.
func (p *Pool) Name() string { return p.name }

// Synced reports whether Consul has answered for this service at least once.
// An unsynced pool is empty because farmdns does not know yet, not because
// the service has no instances.
func (p *Pool) Synced() bool { return p.synced }

// DefaultCapacity returns the configured capacity for targets that report none.
func (p *Pool) DefaultCapacity() int64 { return p.defaultCapacity }

// Targets returns the instances sorted by node, then service ID. The slice is
// shared by every reader and must not be modified; copy it before shuffling.
func (p *Pool) Targets() []Target { return p.targets }

// Counts returns the pool's summary counts.
func (p *Pool) Counts() PoolCounts { return p.counts }

// MeanConnections returns the mean connection count over targets whose load
// is known (draining ones included: their connections still count), and
// false when no target's load is known.
func (p *Pool) MeanConnections() (float64, bool) { return p.mean, p.haveMean }

// Connections returns the connection count to use for t, a target of this
// pool: the reported count when it is known, else the pool mean (0 if no
// load in the pool is known), with estimated set.
func (p *Pool) Connections(t *Target) (n int64, estimated bool) {
	if t.Load.Known() {
		return t.Load.Connections, false
	}
	return int64(math.Round(p.mean)), true
}

func (p *Pool) equal(q *Pool) bool {
	return p.name == q.name && p.synced == q.synced && p.counts == q.counts &&
		slices.EqualFunc(p.targets, q.targets, func(a, b Target) bool { return a.equal(&b) })
}

// Snapshot is an immutable view of every watched service. The watcher
// publishes a new one, with a higher Generation, whenever the content changes;
// readers load it without locks and never see it change.
type Snapshot struct {
	generation uint64
	built      time.Time
	pools      []*Pool // sorted by name
	unmatched  int
	superseded chan struct{}
}

func newSnapshot(gen uint64, built time.Time, pools []*Pool, unmatched int) *Snapshot {
	slices.SortFunc(pools, func(a, b *Pool) int { return strings.Compare(a.name, b.name) })
	return &Snapshot{generation: gen, built: built, pools: pools, unmatched: unmatched, superseded: make(chan struct{})}
}

// Generation numbers snapshots: it increases by one with every publish.
// Generation 0 is the empty snapshot a watcher starts with.
func (s *Snapshot) Generation() uint64 { return s.generation }

// Built returns when the snapshot was built.
func (s *Snapshot) Built() time.Time { return s.built }

// Pools returns every watched service, sorted by name (shared; do not modify).
func (s *Snapshot) Pools() []*Pool { return s.pools }

// Pool returns the named service's pool, or nil if the service is not watched.
func (s *Snapshot) Pool(name string) *Pool {
	i, ok := slices.BinarySearchFunc(s.pools, name, func(p *Pool, n string) int { return strings.Compare(p.name, n) })
	if !ok {
		return nil
	}
	return s.pools[i]
}

// UnmatchedReports counts KV load reports whose key matches no instance of a
// watched service; they are ignored.
func (s *Snapshot) UnmatchedReports() int { return s.unmatched }

// Superseded returns a channel closed when a newer snapshot is published, so
// a consumer can rebuild derived state:
//
//	for s := w.Snapshot(); ; s = w.Snapshot() {
//		rebuild(s)
//		select { case <-s.Superseded(): case <-ctx.Done(): return }
//	}
func (s *Snapshot) Superseded() <-chan struct{} { return s.superseded }

func (s *Snapshot) sameContent(o *Snapshot) bool {
	return s.unmatched == o.unmatched &&
		slices.EqualFunc(s.pools, o.pools, func(a, b *Pool) bool { return a.equal(b) })
}
