package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
)

// Scenario is one simulated farm. Times are in seconds of simulated time.
type Scenario struct {
	Name string
	// Targets is the number of targets at the start; Capacity gives the
	// capacity of target i (the cold target that joins is given Capacity(0)).
	Targets  int
	Capacity func(i int) int64
	// Rate is the Poisson arrival rate of clients, per second.
	Rate float64
	// Lifetime is a connection's mean lifetime; Alpha > 0 makes lifetimes
	// heavy-tailed (Lomax, i.e. Pareto type II, of that shape), else they
	// are exponential.
	Lifetime, Alpha float64
	// Resolvers is the number of resolvers; their popularity is Zipf with
	// exponent ZipfS over ranks 1..Resolvers. A resolver of rank r clamps
	// TTLs up to ClampTTL if r%ClampEvery == 0, and reorders records in every
	// answer it gives if r%ReorderEvery == ReorderFrom%ReorderEvery.
	Resolvers                 int
	ZipfS                     float64
	ClampTTL                  float64
	ClampEvery                int
	ReorderEvery, ReorderFrom int
	TopClamps                 bool // the most popular resolver clamps too
	// NewKeys makes every question come from a new asker (resolvers that
	// use a different source address each time), so farmdns cannot tell a
	// busy resolver from an idle one.
	NewKeys                     bool
	FirstRecord                 float64
	ReportEvery                 float64
	ReportDelayMin, ReportDelay float64 // uniform delay of a report to farmdns
	DetectDelay                 float64 // until Consul marks a dead target critical
	// Clients of a dead target reconnect after ReconnectMin plus a uniform
	// delay of up to ReconnectSpread, through the resolver of rank
	// ReconnectVia (0: one by popularity, like new clients).
	ReconnectMin, ReconnectSpread float64
	ReconnectVia                  int
	// FailBusiest makes the target that dies in each cycle the one with
	// the most connections, rather than target i in cycle i.
	FailBusiest bool
	// ECSShare of all clients use one more resolver, a public one that
	// sends EDNS Client Subnet: its clients are spread evenly over
	// ECSSubnets subnets, each cached and keyed on its own by the
	// resolver and farmdns alike, so each is an asker of its own.
	ECSShare   float64
	ECSSubnets int
	Instances  int
	// The steady state is measured over [Warmup, Warmup+Steady). Then come
	// Cycles failure cycles of CycleLen each: target i dies at the start of
	// cycle i and comes back empty (a cold target, its reporter restarted)
	// RejoinAfter later.
	Warmup, Steady        float64
	Cycles                int
	CycleLen, RejoinAfter float64
	Config                policy.Config
	Seed                  uint64
}

// Result is what one run measured.
type Result struct {
	P50, P99, Max float64 // max/mean utilisation over the steady window, 1 s samples
	// Per failure cycle: the highest max/mean until the target comes back;
	// seconds until the returning (cold) target is within 10% of the mean
	// utilisation (-1: not before the cycle ended); its highest utilisation
	// over the mean, minus 1.
	FailPeak, ColdFill, ColdOver []float64
	// ColdWindow is how long a cold target was watched in each cycle.
	ColdWindow    float64
	Queries       int
	QPS           float64 // queries to farmdns per second of simulated time
	ClientsPerAns float64
}

const (
	evArrival uint8 = iota
	evDepart
	evReport
	evDeliver
	evReconnect
	evSample
	evFail
	evDetect
	evJoin
)

type event struct {
	t    float64
	kind uint8
	a, b int32
}

// eventHeap is a binary min-heap on t; ties keep no particular order, but
// the run is deterministic because the heap operations are.
type eventHeap []event

func (h *eventHeap) push(e event) {
	*h = append(*h, e)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if s[p].t <= s[i].t {
			break
		}
		s[p], s[i] = s[i], s[p]
		i = p
	}
}

func (h *eventHeap) pop() event {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && s[r].t < s[l].t {
			m = r
		}
		if s[i].t <= s[m].t {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}

type simTarget struct {
	capacity    int64
	alive       bool
	critical    bool // Consul knows it is dead
	present     bool // registered in Consul
	incarnation int32
	conns       int64
	accepted    int64
	// The report in flight to farmdns and the one farmdns has.
	sent, known health.Load
	hasKnown    bool
}

type resolver struct {
	clamp   bool
	reorder bool
	// The cached answer: records (sim target ids) and expiry.
	recs    [policy.MaxAnswers]int32
	n       int
	expires float64
	next    int // which instance it asks next
}

type instance struct {
	pool  *policy.Pool
	ids   []int32 // pool record index -> sim target id
	dst   []int
	count int
}

type sim struct {
	sc        Scenario
	rng       *rand.Rand
	now       float64
	epoch     int64
	events    eventHeap
	targets   []simTarget
	resolvers []resolver
	popCDF    []float64
	inst      []instance
	cold      int       // the target that came back in this cycle, or -1
	coldAt    float64   // when it came back
	samples   []float64 // steady window
	res       Result
	queries   int
}

// Run simulates one scenario and returns its measurements.
func Run(sc Scenario) Result {
	s := &sim{sc: sc, rng: rand.New(rand.NewPCG(sc.Seed, sc.Seed^0x5eed)), cold: -1}
	s.epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	s.setup()
	end := sc.Warmup + sc.Steady + float64(sc.Cycles)*sc.CycleLen
	for len(s.events) > 0 {
		e := s.events.pop()
		if e.t > end {
			break
		}
		s.now = e.t
		s.handle(e)
	}
	r := s.res
	r.Queries = s.queries
	r.ColdWindow = sc.CycleLen - sc.RejoinAfter
	r.QPS = float64(s.queries) / end
	if len(s.samples) > 0 {
		slices.Sort(s.samples)
		r.P50 = quantile(s.samples, 0.5)
		r.P99 = quantile(s.samples, 0.99)
		r.Max = s.samples[len(s.samples)-1]
	}
	r.ClientsPerAns, _ = s.inst[0].pool.ClientsPerAnswer()
	return r
}

func quantile(sorted []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func (s *sim) setup() {
	sc := s.sc
	s.targets = make([]simTarget, sc.Targets, sc.Targets+1)
	var capSum float64
	for i := range s.targets {
		s.targets[i] = simTarget{capacity: sc.Capacity(i), alive: true, present: true}
		capSum += float64(sc.Capacity(i))
	}
	// Resolvers and their Zipf popularity, then the ECS resolver's subnets.
	nr := sc.Resolvers + sc.ECSSubnets
	s.resolvers = make([]resolver, nr)
	s.popCDF = make([]float64, nr)
	var zipf float64
	for i := range sc.Resolvers {
		zipf += 1 / math.Pow(float64(i+1), sc.ZipfS)
	}
	var sum float64
	for i := range s.resolvers {
		rank := i + 1
		if i >= sc.Resolvers {
			sum += sc.ECSShare / float64(sc.ECSSubnets)
			s.popCDF[i] = sum
			continue
		}
		sum += (1 - sc.ECSShare) / math.Pow(float64(rank), sc.ZipfS) / zipf
		s.popCDF[i] = sum
		r := &s.resolvers[i]
		r.clamp = sc.ClampEvery > 0 && rank%sc.ClampEvery == 0 || sc.TopClamps && rank == 1
		r.reorder = sc.ReorderEvery > 0 && rank%sc.ReorderEvery == sc.ReorderFrom%sc.ReorderEvery
		r.next = i % max(sc.Instances, 1)
	}
	for i := range s.popCDF {
		s.popCDF[i] /= sum
	}
	// The steady state of an M/G/infinity queue, placed in proportion to
	// capacity at random: each connection's remaining lifetime follows the
	// equilibrium distribution of the lifetime.
	n := int(sc.Rate * sc.Lifetime)
	for range n {
		x := s.rng.Float64() * capSum
		t := 0
		for ; t < len(s.targets)-1 && x >= float64(s.targets[t].capacity); t++ {
			x -= float64(s.targets[t].capacity)
		}
		s.targets[t].conns++
		s.targets[t].accepted++
		s.events.push(event{t: s.residual(), kind: evDepart, a: int32(t)})
	}
	for i := range s.targets {
		s.targets[i].known = s.load(i)
		s.targets[i].hasKnown = true
		s.events.push(event{t: s.rng.Float64() * sc.ReportEvery, kind: evReport, a: int32(i)})
	}
	s.inst = make([]instance, max(sc.Instances, 1))
	for i := range s.inst {
		s.inst[i].dst = make([]int, 0, policy.MaxAnswers)
	}
	s.rebuild()
	s.events.push(event{t: s.rng.ExpFloat64() / sc.Rate, kind: evArrival})
	s.events.push(event{t: 1, kind: evSample})
	for c := range sc.Cycles {
		at := sc.Warmup + sc.Steady + float64(c)*sc.CycleLen
		s.events.push(event{t: at, kind: evFail, a: int32(c % sc.Targets)})
	}
}

func (s *sim) lifetime() float64 {
	if s.sc.Alpha > 0 {
		lambda := s.sc.Lifetime * (s.sc.Alpha - 1)
		return lambda * (math.Pow(1-s.rng.Float64(), -1/s.sc.Alpha) - 1)
	}
	return s.rng.ExpFloat64() * s.sc.Lifetime
}

// residual draws a remaining lifetime from the equilibrium distribution:
// exponential again, or Lomax with shape one less.
func (s *sim) residual() float64 {
	if s.sc.Alpha > 0 {
		lambda := s.sc.Lifetime * (s.sc.Alpha - 1)
		return lambda * (math.Pow(1-s.rng.Float64(), -1/(s.sc.Alpha-1)) - 1)
	}
	return s.rng.ExpFloat64() * s.sc.Lifetime
}

func (s *sim) nanos(t float64) int64 { return s.epoch + int64(t*1e9) }

func (s *sim) load(i int) health.Load {
	t := &s.targets[i]
	return health.Load{State: health.LoadKnown, Source: health.SourceKV, Connections: t.conns,
		Accepted: t.accepted, Capacity: t.capacity, Updated: time.Unix(0, s.nanos(s.now))}
}

// rebuild gives every farmdns instance a Pool for the current Consul view.
func (s *sim) rebuild() {
	ts := make([]health.Target, 0, len(s.targets))
	ids := make([]int32, 0, len(s.targets))
	for i := range s.targets {
		t := &s.targets[i]
		if !t.present {
			continue
		}
		ht := health.Target{
			Node: fmt.Sprintf("node%03d", i), ServiceID: "ws",
			Address: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), Port: 443,
			Health: health.HealthPassing,
		}
		if t.critical {
			ht.Health = health.HealthCritical
		}
		if t.hasKnown {
			ht.Load = t.known
		} else {
			ht.Load = health.Load{State: health.LoadUnknown, Capacity: t.capacity}
		}
		ts = append(ts, ht)
		ids = append(ids, int32(i))
	}
	now := time.Unix(0, s.nanos(s.now))
	for k := range s.inst {
		cfg := s.sc.Config
		cfg.Seed = uint64(k + 1)
		s.inst[k].pool = policy.NewPool(cfg, ts, nil, s.inst[k].pool, now)
		s.inst[k].ids = ids
	}
}

func (s *sim) handle(e event) {
	sc := &s.sc
	switch e.kind {
	case evArrival:
		s.connect(s.pickResolver())
		s.events.push(event{t: s.now + s.rng.ExpFloat64()/sc.Rate, kind: evArrival})
	case evReconnect:
		ri := int(e.b) - 1
		if ri < 0 {
			ri = s.pickResolver()
		}
		s.connect(ri)
	case evDepart:
		t := &s.targets[e.a]
		if t.incarnation == e.b && t.alive {
			t.conns--
		}
	case evReport:
		t := &s.targets[e.a]
		if !t.alive {
			return
		}
		t.sent = s.load(int(e.a))
		s.events.push(event{t: s.now + sc.ReportDelayMin + s.rng.Float64()*(sc.ReportDelay-sc.ReportDelayMin), kind: evDeliver, a: e.a})
		s.events.push(event{t: s.now + sc.ReportEvery, kind: evReport, a: e.a})
	case evDeliver:
		t := &s.targets[e.a]
		t.known, t.hasKnown = t.sent, true
		s.rebuild()
	case evSample:
		s.sample()
		s.events.push(event{t: s.now + 1, kind: evSample})
	case evFail:
		s.cold = -1
		s.res.FailPeak = append(s.res.FailPeak, 0)
		if sc.FailBusiest {
			e.a = s.busiest()
		}
		s.events.push(event{t: s.now + sc.RejoinAfter, kind: evJoin, a: e.a})
		t := &s.targets[e.a]
		t.alive = false
		t.incarnation++
		for range t.conns {
			s.events.push(event{t: s.now + sc.ReconnectMin + s.rng.Float64()*sc.ReconnectSpread, kind: evReconnect, b: int32(sc.ReconnectVia)})
		}
		t.conns = 0
		s.events.push(event{t: s.now + sc.DetectDelay, kind: evDetect, a: e.a})
	case evDetect:
		s.targets[e.a].critical = true
		s.rebuild()
	case evJoin:
		// The target comes back empty, its reporter restarted (Accepted
		// starts over), and passes its health check again.
		t := &s.targets[e.a]
		t.alive, t.critical, t.conns, t.accepted = true, false, 0, 0
		s.cold, s.coldAt = int(e.a), s.now
		s.res.ColdFill = append(s.res.ColdFill, -1)
		s.res.ColdOver = append(s.res.ColdOver, 0)
		t.known, t.hasKnown = s.load(s.cold), true
		s.events.push(event{t: s.now + s.rng.Float64()*sc.ReportEvery, kind: evReport, a: e.a})
		s.rebuild()
	}
}

// pickResolver returns a resolver index drawn by popularity.
func (s *sim) pickResolver() int {
	return min(sort.SearchFloat64s(s.popCDF, s.rng.Float64()), len(s.resolvers)-1)
}

// busiest returns the live target with the most connections.
func (s *sim) busiest() int32 {
	best := int32(-1)
	for i := range s.targets {
		t := &s.targets[i]
		if t.alive && (best < 0 || t.conns > s.targets[best].conns) {
			best = int32(i)
		}
	}
	return best
}

// connect brings one client of resolver ri: the resolver answers from
// cache or asks farmdns; the client takes the first record (or, sometimes,
// another one) and falls back to the next ones while they are dead.
func (s *sim) connect(ri int) {
	r := &s.resolvers[ri]
	if r.n == 0 || s.now >= r.expires {
		s.resolve(ri)
	}
	if r.n == 0 {
		return // no answer: the client gives up
	}
	var order [policy.MaxAnswers]int32
	copy(order[:r.n], r.recs[:r.n])
	if r.reorder {
		for i := r.n - 1; i > 0; i-- {
			j := s.rng.IntN(i + 1)
			order[i], order[j] = order[j], order[i]
		}
	}
	start := 0
	if r.n > 1 && s.rng.Float64() >= s.sc.FirstRecord {
		start = s.rng.IntN(r.n)
	}
	for k := range r.n {
		ti := order[(start+k)%r.n]
		t := &s.targets[ti]
		if !t.alive {
			continue
		}
		t.conns++
		t.accepted++
		s.events.push(event{t: s.now + s.lifetime(), kind: evDepart, a: ti, b: t.incarnation})
		return
	}
	// Every record is dead: try again shortly, through DNS.
	s.events.push(event{t: s.now + 1 + s.rng.Float64(), kind: evReconnect, b: int32(ri + 1)})
}

func (s *sim) resolve(ri int) {
	r := &s.resolvers[ri]
	in := &s.inst[r.next]
	r.next = (r.next + 1) % len(s.inst)
	key := uint64(ri)*0x9e3779b97f4a7c15 + 1
	if s.sc.NewKeys {
		key = s.rng.Uint64()
	}
	picked, ttl, _ := in.pool.Choose(in.dst, policy.IPv4, key, s.nanos(s.now))
	in.dst = picked
	s.queries++
	r.n = len(picked)
	for i, j := range picked {
		r.recs[i] = in.ids[j]
	}

	life := float64(ttl)
	if r.clamp {
		life = max(life, s.sc.ClampTTL)
	}
	r.expires = s.now + life
}

// sample records max/mean utilisation over the live targets.
func (s *sim) sample() {
	var conn, capSum, hi float64
	for i := range s.targets {
		t := &s.targets[i]
		if !t.alive {
			continue
		}
		conn += float64(t.conns)
		capSum += float64(t.capacity)
		hi = max(hi, float64(t.conns)/float64(t.capacity))
	}
	mean := conn / capSum
	ratio := hi / mean
	sc := &s.sc
	switch {
	case s.now >= sc.Warmup && s.now < sc.Warmup+sc.Steady:
		s.samples = append(s.samples, ratio)
	case s.cold < 0 && len(s.res.FailPeak) > 0:
		i := len(s.res.FailPeak) - 1
		s.res.FailPeak[i] = max(s.res.FailPeak[i], ratio)
	}
	if s.cold >= 0 {
		t := &s.targets[s.cold]
		u := float64(t.conns) / float64(t.capacity) / mean
		i := len(s.res.ColdFill) - 1
		if s.res.ColdFill[i] < 0 && u >= 0.9 {
			s.res.ColdFill[i] = s.now - s.coldAt
		}
		s.res.ColdOver[i] = max(s.res.ColdOver[i], u-1)
	}
}
