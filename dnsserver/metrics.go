package dnsserver

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
)

// The query path counts into plain atomics; a Collector turns them into
// Prometheus series at scrape time. That keeps a query's bookkeeping to a few
// atomic adds with no label hashing, and no series exists for a combination
// that never happened.

// qtypeNames are the query types counted by name; every other is "other".
// A fixed set keeps the label's cardinality bounded whatever clients send.
var qtypeNames = [...]string{"other", "A", "AAAA", "CNAME", "MX", "NS", "SOA", "TXT", "SRV", "PTR",
	"CAA", "HTTPS", "SVCB", "DS", "DNSKEY", "ANY", "AXFR", "IXFR"}

func qtypeIndex(t uint16) int {
	switch t {
	case dns.TypeA:
		return 1
	case dns.TypeAAAA:
		return 2
	case dns.TypeCNAME:
		return 3
	case dns.TypeMX:
		return 4
	case dns.TypeNS:
		return 5
	case dns.TypeSOA:
		return 6
	case dns.TypeTXT:
		return 7
	case dns.TypeSRV:
		return 8
	case dns.TypePTR:
		return 9
	case dns.TypeCAA:
		return 10
	case dns.TypeHTTPS:
		return 11
	case dns.TypeSVCB:
		return 12
	case dns.TypeDS:
		return 13
	case dns.TypeDNSKEY:
		return 14
	case dns.TypeANY:
		return 15
	case dns.TypeAXFR:
		return 16
	case dns.TypeIXFR:
		return 17
	}
	return 0
}

const (
	numRcodes = dns.RcodeBadVers + 1
	noZone    = "none" // the zone label of queries for names in no zone
)

var protoNames = [2]string{"udp", "tcp"}

// zoneCounters counts one zone's queries by transport, type and rcode, in
// a shard per reader (see counterShards).
type zoneCounters []*zoneShard

type zoneShard struct {
	_ [64]byte // no cache line shared with another shard
	n [2][len(qtypeNames)][numRcodes]atomic.Uint64
	_ [64]byte
}

func newZoneCounters(shards int) zoneCounters {
	zc := make(zoneCounters, shards)
	for i := range zc {
		zc[i] = new(zoneShard)
	}
	return zc
}

// durationBuckets are the latency histogram's upper bounds: 1 µs to 65 ms,
// as a fast-path reply takes well under a microsecond.
var durationBuckets = prometheus.ExponentialBuckets(1e-6, 4, numDurationBuckets)

const numDurationBuckets = 9

// counterShard is one reader's truncation count and latency histogram.
type counterShard struct {
	_         [64]byte
	truncated [2]atomic.Uint64
	buckets   [2][numDurationBuckets]atomic.Uint64 // not cumulative
	count     [2]atomic.Uint64
	sumNs     [2]atomic.Uint64
	_         [64]byte
}

// counterShards is how many shards the counters have. Each UDP reader
// counts into the shard of its number (modulo this), so that readers on
// different cores never write the same cache line: a shared counter would
// be a lock in all but name. TCP and direct callers use shard 0.
func counterShards() int { return max(1, runtime.GOMAXPROCS(0)) }

// metrics is the handler's bookkeeping.
type metrics struct {
	mu     sync.Mutex // serialises adding zones; readers never lock
	zones  atomic.Pointer[map[string]zoneCounters]
	shards []*counterShard
}

func newMetrics() *metrics {
	m := &metrics{shards: make([]*counterShard, counterShards())}
	for i := range m.shards {
		m.shards[i] = new(counterShard)
	}
	m.zones.Store(&map[string]zoneCounters{noZone: newZoneCounters(len(m.shards))})
	return m
}

// addZones makes counters for zones that have none yet. Counters of zones
// that were removed stay, so that a reload never resets a counter.
// The Consul DNS domains count as zones: they are configured, so the label
// stays bounded.
func (m *metrics) addZones(st *State) {
	var names []string
	if st.Zones != nil {
		for _, z := range st.Zones.Zones() {
			names = append(names, z.Origin)
		}
	}
	if d, ok := st.ConsulDNS.(interface{ Domains() []string }); ok {
		names = append(names, d.Domains()...)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.zones.Load()
	grown := false
	for _, z := range names {
		if old[z] == nil {
			grown = true
		}
	}
	if !grown {
		return
	}
	next := make(map[string]zoneCounters, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	for _, z := range names {
		if next[z] == nil {
			next[z] = newZoneCounters(len(m.shards))
		}
	}
	m.zones.Store(&next)
}

// count records one answered query in the given shard.
func (m *metrics) count(shard int, zone string, tcp bool, qtype uint16, rcode int, truncated bool, start time.Time) {
	proto := 0
	if tcp {
		proto = 1
	}
	zones := *m.zones.Load()
	zc := zones[zone]
	if zc == nil {
		zc = zones[noZone]
	}
	if rcode < 0 || rcode >= numRcodes {
		rcode = dns.RcodeServerFailure
	}
	shard %= len(m.shards)
	zc[shard].n[proto][qtypeIndex(qtype)][rcode].Add(1)
	sh := m.shards[shard]
	if truncated {
		sh.truncated[proto].Add(1)
	}
	if !start.IsZero() { // not every query is timed; see udpTimingSample
		d := time.Since(start)
		b := 0
		for b < len(durationBuckets) && d.Seconds() > durationBuckets[b] {
			b++
		}
		if b < len(durationBuckets) {
			sh.buckets[proto][b].Add(1)
		}
		sh.count[proto].Add(1)
		sh.sumNs[proto].Add(uint64(max(d, 0)))
	}
}

var (
	requestsDesc  = prometheus.NewDesc("farmdns_dns_requests_total", "DNS queries answered, by zone, transport, query type and rcode.", []string{"zone", "proto", "qtype", "rcode"}, nil)
	truncatedDesc = prometheus.NewDesc("farmdns_dns_truncated_total", "UDP replies sent with TC set.", []string{"proto"}, nil)
	panicsDesc    = prometheus.NewDesc("farmdns_dns_panics_total", "Queries whose handling panicked; each was answered SERVFAIL.", nil, nil)
	durationDesc  = prometheus.NewDesc("farmdns_dns_request_duration_seconds", "Time from reading a query to having its reply ready to send (UDP: a sample of one query in 8).", []string{"proto"}, nil)
)

// collector exposes a Handler's counters.
type collector struct{ h *Handler }

// Collector returns the Prometheus collector of the handler's query metrics.
func (h *Handler) Collector() prometheus.Collector { return collector{h} }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- requestsDesc
	ch <- truncatedDesc
	ch <- panicsDesc
	ch <- durationDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	m := c.h.metrics
	for zone, zc := range *m.zones.Load() {
		var sum [2][len(qtypeNames)][numRcodes]uint64
		for _, sh := range zc {
			for p := range sh.n {
				for q := range sh.n[p] {
					for r := range sh.n[p][q] {
						sum[p][q][r] += sh.n[p][q][r].Load()
					}
				}
			}
		}
		for p := range sum {
			for q := range sum[p] {
				for r, n := range sum[p][q] {
					if n > 0 {
						ch <- prometheus.MustNewConstMetric(requestsDesc, prometheus.CounterValue, float64(n),
							zone, protoNames[p], qtypeNames[q], rcodeName(r))
					}
				}
			}
		}
	}
	for p, name := range protoNames {
		var truncated, count, sumNs uint64
		buckets := make(map[float64]uint64, len(durationBuckets))
		var cum uint64
		for b, le := range durationBuckets {
			for _, sh := range m.shards {
				cum += sh.buckets[p][b].Load()
			}
			buckets[le] = cum
		}
		for _, sh := range m.shards {
			truncated += sh.truncated[p].Load()
			count += sh.count[p].Load()
			sumNs += sh.sumNs[p].Load()
		}
		ch <- prometheus.MustNewConstMetric(truncatedDesc, prometheus.CounterValue, float64(truncated), name)
		// Loaded one after the other, count may run ahead of the buckets by
		// a query or two: harmless in a histogram read at scrape time.
		ch <- prometheus.MustNewConstHistogram(durationDesc, max(count, cum), float64(sumNs)/1e9, buckets, name)
	}
	ch <- prometheus.MustNewConstMetric(panicsDesc, prometheus.CounterValue, float64(c.h.panics.Load()))
}

// rcodeName names an rcode; 16 is BADVERS in a reply to a query (miekg/dns
// names it BADSIG, its meaning in TSIG).
func rcodeName(r int) string {
	if r == dns.RcodeBadVers {
		return "BADVERS"
	}
	return dns.RcodeToString[r]
}

var (
	poolAnswersDesc = prometheus.NewDesc("farmdns_pool_answers_total",
		"Answers that named the target (or LB), by this instance.", []string{"pool", "target"}, nil)
	poolTargetsDesc = prometheus.NewDesc("farmdns_pool_targets",
		"Targets of the pool by state: healthy (may be answered: passing or warning, not draining), warning, draining, critical, stale (load report too old).",
		[]string{"pool", "state"}, nil)
	poolOutcomesDesc = prometheus.NewDesc("farmdns_pool_outcomes_total",
		"Choices made for the pool by outcome: answer, fail-open (nothing healthy, answered anyway), nodata, servfail.",
		[]string{"pool", "outcome"}, nil)
	targetConnsDesc = prometheus.NewDesc("farmdns_target_connections",
		"Connections the target last reported (KV report or service meta).", []string{"pool", "target"}, nil)
	targetCapDesc = prometheus.NewDesc("farmdns_target_capacity",
		"The target's capacity in connections (report, meta or configured default; 0: unlimited).", []string{"pool", "target"}, nil)
)

// PoolAnswersMetric returns one target's farmdns_pool_answers_total sample,
// for pools answered outside the zones (Consul DNS services) to count
// under the same name.
func PoolAnswersMetric(pool, target string, answers uint64) prometheus.Metric {
	return prometheus.MustNewConstMetric(poolAnswersDesc, prometheus.CounterValue, float64(answers), pool, target)
}

// poolCollector exposes every pool's state, read at scrape time, so that a
// target that leaves Consul leaves the metrics too.
type poolCollector struct{ h *Handler }

// PoolCollector returns the Prometheus collector of the pools' state.
func (h *Handler) PoolCollector() prometheus.Collector { return poolCollector{h} }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolAnswersDesc, poolTargetsDesc, poolOutcomesDesc, targetConnsDesc, targetCapDesc} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	c.h.pools.mu.Lock()
	latest := c.h.pools.latest
	c.h.pools.mu.Unlock()
	for _, s := range c.h.state.Load().pools {
		name := s.spec.Name
		for i := range s.outcomes[0].n {
			ch <- prometheus.MustNewConstMetric(poolOutcomesDesc, prometheus.CounterValue, float64(s.outcome(policy.Outcome(i))), name, policy.Outcome(i).String())
		}
		if p := s.cur.Load(); p != nil {
			for _, t := range p.Stats(now) {
				ch <- prometheus.MustNewConstMetric(poolAnswersDesc, prometheus.CounterValue, float64(t.Answers), name, t.Node+"/"+t.ServiceID)
			}
		}
		var states [len(stateNames)]int
		for _, t := range latest[s.spec.Service] {
			label := t.Node + "/" + t.ServiceID
			ch <- prometheus.MustNewConstMetric(targetConnsDesc, prometheus.GaugeValue, float64(t.Load.Connections), name, label)
			ch <- prometheus.MustNewConstMetric(targetCapDesc, prometheus.GaugeValue, float64(t.Load.Capacity), name, label)
			if t.Eligible() {
				states[0]++
			}
			switch {
			case t.Draining:
				states[2]++
			case t.Health == health.HealthWarning:
				states[1]++
			case t.Health == health.HealthCritical:
				states[3]++
			}
			if t.Load.State == health.LoadStale {
				states[4]++
			}
		}
		for i, n := range stateNames {
			ch <- prometheus.MustNewConstMetric(poolTargetsDesc, prometheus.GaugeValue, float64(states[i]), name, n)
		}
	}
}

var stateNames = [...]string{"healthy", "warning", "draining", "critical", "stale"}

var (
	rrlResponsesDesc = prometheus.NewDesc("farmdns_rrl_responses_total",
		"UDP responses by what response rate limiting did with them: pass, drop, or slip (sent truncated, no records). Counted while rate limiting is on.",
		[]string{"action"}, nil)
	rrlLogOnlyDesc = prometheus.NewDesc("farmdns_rrl_log_only_total",
		"UDP responses sent in full only because dns.rrl.log_only is set, by what rate limiting would have done: drop or slip.",
		[]string{"action"}, nil)
	rrlFillDesc = prometheus.NewDesc("farmdns_rrl_table_fill_ratio",
		"Share of the rate limiter's fixed table of buckets holding a client prefix's state; 0 when rate limiting is off.",
		nil, nil)
)

var rrlActionNames = [...]string{"pass", "drop", "slip"} // by rrl.Action

// rrlCollector exposes a Server's rate limiting counters.
type rrlCollector struct{ r *rrlState }

// RRLCollector returns the Prometheus collector of the server's response rate
// limiting. Its counters survive reloads that swap the limiter.
func (s *Server) RRLCollector() prometheus.Collector { return rrlCollector{&s.rrl} }

func (c rrlCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- rrlResponsesDesc
	ch <- rrlLogOnlyDesc
	ch <- rrlFillDesc
}

func (c rrlCollector) Collect(ch chan<- prometheus.Metric) {
	for a, name := range rrlActionNames {
		ch <- prometheus.MustNewConstMetric(rrlResponsesDesc, prometheus.CounterValue, float64(c.r.done[a].Load()), name)
		if a > 0 {
			ch <- prometheus.MustNewConstMetric(rrlLogOnlyDesc, prometheus.CounterValue, float64(c.r.would[a].Load()), name)
		}
	}
	fill := 0.0
	if l := c.r.limiter.Load(); l != nil {
		fill = l.Fill()
	}
	ch <- prometheus.MustNewConstMetric(rrlFillDesc, prometheus.GaugeValue, fill)
}
