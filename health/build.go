package health

import (
	"bytes"
	"cmp"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Consul's maintenance-mode check IDs (agent/structs: NodeMaint, ServiceMaintPrefix).
const (
	nodeMaintCheckID      = "_node_maintenance"
	serviceMaintCheckPref = "_service_maintenance:"
)

// Service meta keys holding the fallback load.
const (
	metaConnections = "connections"
	metaCapacity    = "capacity"
)

// instance is one service instance as Consul returned it, reduced to what the
// snapshot needs. It is compared field by field to detect changes.
type instance struct {
	node, nodeAddr string
	id, addr       string
	port           int
	tags           []string
	meta           map[string]string
	health         HealthState
	draining       bool
	loadKey        string // KV key of its load report, derived from node and id
}

func (a *instance) equal(b *instance) bool {
	return a.node == b.node && a.nodeAddr == b.nodeAddr && a.id == b.id && a.addr == b.addr &&
		a.port == b.port && a.health == b.health && a.draining == b.draining &&
		slices.Equal(a.tags, b.tags) && mapsEqual(a.meta, b.meta)
}

func instancesEqual(a, b []instance) bool {
	return slices.EqualFunc(a, b, func(x, y instance) bool { return x.equal(&y) })
}

// instancesFromEntries reduces a /v1/health/service answer for service,
// sorted by node then service ID so that equal content compares equal.
func instancesFromEntries(entries []*api.ServiceEntry, loadPrefix, service string) []instance {
	out := make([]instance, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Node == nil || e.Service == nil {
			continue
		}
		in := instance{
			node: e.Node.Node, nodeAddr: e.Node.Address,
			id: e.Service.ID, addr: e.Service.Address, port: e.Service.Port,
			tags: e.Service.Tags, meta: e.Service.Meta,
		}
		in.health, in.draining = aggregateChecks(e.Checks, e.Service.ID)
		in.loadKey = LoadKey(loadPrefix, service, in.node, in.id)
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, b instance) int {
		return cmp.Or(strings.Compare(a.node, b.node), strings.Compare(a.id, b.id))
	})
	return out
}

// aggregateChecks returns the worst status of the non-maintenance checks and
// whether a node or service maintenance check is present.
func aggregateChecks(checks api.HealthChecks, serviceID string) (HealthState, bool) {
	cs := make([]checkState, 0, len(checks))
	for _, c := range checks {
		if c != nil {
			cs = append(cs, checkState{CheckID: c.CheckID, Status: c.Status})
		}
	}
	return aggregate(cs, serviceID)
}

// aggregate is aggregateChecks over the checks' IDs and statuses.
func aggregate(checks []checkState, serviceID string) (HealthState, bool) {
	h, draining := HealthPassing, false
	for _, c := range checks {
		if c.CheckID == nodeMaintCheckID || c.CheckID == serviceMaintCheckPref+serviceID {
			draining = true
			continue
		}
		var s HealthState
		switch c.Status {
		case api.HealthPassing:
			s = HealthPassing
		case api.HealthWarning:
			s = HealthWarning
		default: // critical, maintenance, or anything Consul may add: fail safe
			s = HealthCritical
		}
		h = max(h, s)
	}
	return h, draining
}

// kvPair is one key of the load prefix.
type kvPair struct {
	key   string
	value []byte
}

func kvFromPairs(pairs api.KVPairs) []kvPair {
	out := make([]kvPair, 0, len(pairs))
	for _, p := range pairs {
		if p == nil || strings.HasSuffix(p.Key, "/") { // folder markers carry no report
			continue
		}
		out = append(out, kvPair{key: p.Key, value: p.Value})
	}
	slices.SortFunc(out, func(a, b kvPair) int { return strings.Compare(a.key, b.key) })
	return out
}

func kvEqual(a, b []kvPair) bool {
	return slices.EqualFunc(a, b, func(x, y kvPair) bool { return x.key == y.key && bytes.Equal(x.value, y.value) })
}

// parsedReport caches the parse of one KV value so that a value is parsed,
// and a malformed one logged and counted, once per change.
type parsedReport struct {
	value  []byte
	report LoadReport
	err    error
	seen   time.Time // when farmdns first read this value (local, monotonic)
}

// builder turns the latest answer of every data set into snapshots. It is
// owned by the goroutine running Watcher.Run.
type builder struct {
	log          *slog.Logger
	prefix       string
	maxReportAge time.Duration
	services     []ServiceConfig

	instances map[string][]instance // by service; absent until first answer
	reports   map[string]parsedReport

	// Complaints about meta and addresses seen in the previous and the
	// current build: a bad value is logged and counted when first seen.
	prevComplaints, complaints map[string]string

	malformedTotal      uint64
	invalidAddressTotal uint64

	// reportLag, if set, is told how old each new load report is when it
	// reaches the builder: the reporter's count to farmdns's view of it.
	reportLag func(time.Duration)
}

func newBuilder(cfg *WatcherConfig, log *slog.Logger) *builder {
	return &builder{
		log: log, prefix: cfg.LoadPrefix, maxReportAge: cfg.MaxReportAge, services: cfg.Services,
		instances: map[string][]instance{}, reports: map[string]parsedReport{},
		prevComplaints: map[string]string{}, complaints: map[string]string{},
	}
}

// setKV replaces the KV data, reparsing only changed values.
func (b *builder) setKV(pairs []kvPair) {
	now := time.Now()
	next := make(map[string]parsedReport, len(pairs))
	for _, p := range pairs {
		if old, ok := b.reports[p.key]; ok && bytes.Equal(old.value, p.value) {
			next[p.key] = old
			continue
		}
		r, err := ParseLoadReport(p.value)
		if err != nil {
			b.malformedTotal++
			b.log.Warn("malformed load report; treating the load as unknown", "key", p.key, "err", err)
		} else if b.reportLag != nil {
			b.reportLag(time.Since(r.Updated))
		}
		next[p.key] = parsedReport{value: p.value, report: r, err: err, seen: now}
	}
	b.reports = next
}

// complain logs and counts a bad value the first time it is seen (again).
func (b *builder) complain(key, value string, counter *uint64, msg string, args ...any) {
	b.complaints[key] = value
	if old, ok := b.prevComplaints[key]; ok && old == value {
		return
	}
	*counter++
	b.log.Warn(msg, args...)
}

// build makes a snapshot of the current data as of now (which decides
// staleness). It also returns when the next known report turns stale, zero
// if none will, so the caller can rebuild then.
func (b *builder) build(gen uint64, now time.Time) (*Snapshot, time.Time) {
	var nextStale time.Time
	matched := 0
	pools := make([]*Pool, 0, len(b.services))
	for _, sc := range b.services {
		ins, synced := b.instances[sc.Name]
		p := &Pool{name: sc.Name, synced: synced, defaultCapacity: sc.DefaultCapacity, targets: make([]Target, 0, len(ins))}
		var sum float64
		for i := range ins {
			in := &ins[i]
			t, ok := b.target(sc, in)
			if !ok {
				p.counts.InvalidAddress++
				continue
			}
			if r, ok := b.reports[in.loadKey]; ok {
				matched++
				at := b.applyReport(&t, r, now)
				if t.Load.State == LoadKnown && at.After(now) && (nextStale.IsZero() || at.Before(nextStale)) {
					nextStale = at
				}
			} else {
				b.applyMeta(sc, &t)
			}
			b.applyCapacity(sc, &t)
			if t.Load.State == LoadKnown {
				sum += float64(t.Load.Connections)
				p.counts.LoadKnown++
			}
			p.targets = append(p.targets, t)
		}
		for i := range p.targets {
			t := &p.targets[i]
			switch t.Health {
			case HealthPassing:
				p.counts.Passing++
			case HealthWarning:
				p.counts.Warning++
			default:
				p.counts.Critical++
			}
			if t.Draining {
				p.counts.Draining++
			}
			switch t.Load.State {
			case LoadStale:
				p.counts.LoadStale++
			case LoadUnknown:
				p.counts.LoadUnknown++
			case LoadMalformed:
				p.counts.LoadMalformed++
			}
		}
		p.counts.Targets = len(p.targets)
		if p.counts.LoadKnown > 0 {
			p.mean, p.haveMean = sum/float64(p.counts.LoadKnown), true
		}
		pools = append(pools, p)
	}
	b.prevComplaints, b.complaints = b.complaints, make(map[string]string, len(b.complaints))
	return newSnapshot(gen, now, pools, len(b.reports)-matched), nextStale
}

// target converts an instance, without its load. It fails when the address
// is not an IP address (a DNS answer needs one).
func (b *builder) target(sc ServiceConfig, in *instance) (Target, bool) {
	raw := in.addr
	if raw == "" {
		raw = in.nodeAddr
	}
	addr, err := netip.ParseAddr(raw)
	if err != nil || in.port < 0 || in.port > 65535 {
		b.complain("addr/"+sc.Name+"/"+in.node+"/"+in.id, raw+":"+strconv.Itoa(in.port), &b.invalidAddressTotal,
			"instance address is not an IP address and port; leaving it out",
			"service", sc.Name, "node", in.node, "service_id", in.id, "address", raw, "port", in.port)
		return Target{}, false
	}
	return Target{
		Node: in.node, ServiceID: in.id, Address: addr.Unmap(), Port: uint16(in.port),
		Tags: in.tags, Meta: in.meta, Health: in.health, Draining: in.draining,
	}, true
}

// applyReport sets t's load from a KV report and returns when the report
// turns stale. Its age runs from its own stamp or, if that is later, from
// when farmdns first saw the value: a reporter whose clock is ahead (or a
// stamp in 9999) cannot keep a report fresh once it stops changing.
func (b *builder) applyReport(t *Target, r parsedReport, now time.Time) (staleAt time.Time) {
	if r.err != nil {
		t.Load = Load{State: LoadMalformed, Source: SourceKV}
		return time.Time{}
	}
	updated, staleAt := r.report.Updated, r.report.Updated.Add(b.maxReportAge)
	if r.seen.Before(updated) {
		updated, staleAt = r.seen.UTC(), r.seen.Add(b.maxReportAge) // staleAt keeps the monotonic reading
	}
	t.Load = Load{
		State: LoadKnown, Source: SourceKV,
		Connections: r.report.Connections, Accepted: r.report.Accepted,
		Capacity: r.report.Capacity, Updated: updated,
	}
	if now.After(staleAt) {
		t.Load.State = LoadStale
	}
	return staleAt
}

func (b *builder) applyMeta(sc ServiceConfig, t *Target) {
	v, ok := t.Meta[metaConnections]
	if !ok {
		return // LoadUnknown
	}
	n, err := parseCount(v)
	if err != nil {
		b.malformedMeta(sc, t, metaConnections, v, err)
		t.Load = Load{State: LoadMalformed, Source: SourceMeta}
		return
	}
	t.Load = Load{State: LoadKnown, Source: SourceMeta, Connections: n}
}

// applyCapacity resolves the capacity: report, meta, configured default. A
// malformed meta capacity makes the load unknown, as any malformed input does.
func (b *builder) applyCapacity(sc ServiceConfig, t *Target) {
	if t.Load.Capacity > 0 {
		return
	}
	if v, ok := t.Meta[metaCapacity]; ok {
		n, err := parseCount(v)
		if err != nil {
			b.malformedMeta(sc, t, metaCapacity, v, err)
			t.Load = Load{State: LoadMalformed, Source: t.Load.Source, Capacity: sc.DefaultCapacity}
			return
		}
		if n > 0 {
			t.Load.Capacity = n
			return
		}
	}
	t.Load.Capacity = sc.DefaultCapacity
}

func (b *builder) malformedMeta(sc ServiceConfig, t *Target, key, value string, err error) {
	b.complain("meta/"+key+"/"+sc.Name+"/"+t.Node+"/"+t.ServiceID, value, &b.malformedTotal,
		"malformed load in service meta; treating the load as unknown",
		"service", sc.Name, "node", t.Node, "service_id", t.ServiceID, "key", key, "err", err)
}

func parseCount(s string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not an integer", s)
	}
	if n < 0 {
		return 0, fmt.Errorf("%d is negative", n)
	}
	return n, nil
}
