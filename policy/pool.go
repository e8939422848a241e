package policy

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/farmdns/farmdns/health"
)

// Family restricts a choice to one address family.
type Family uint8

const (
	// AnyFamily chooses among all targets (for SRV answers).
	AnyFamily Family = iota
	// IPv4 chooses among IPv4 targets (A answers).
	IPv4
	// IPv6 chooses among IPv6 targets (AAAA answers).
	IPv6
)

const families = 3

func familyOf(t *health.Target) Family {
	switch {
	case t.Address.Is4():
		return IPv4
	case t.Address.Is6():
		return IPv6
	}
	return AnyFamily // an invalid address: never answered
}

// identity is what makes two targets of successive snapshots the same one.
type identity struct{ node, serviceID string }

// targetState is the part of a target that outlives one Pool: every Pool of
// a chain that contains the target shares it. The atomics are written by
// Choose; the rest only by NewPool, which a chain runs one call at a time.
type targetState struct {
	// The ledger: the clients expected from the answers that named the
	// target first, and in a later position, in 1/ledgerUnit.
	first atomic.Uint64
	other atomic.Uint64
	count atomic.Uint64 // answers that named it
	last  atomic.Int64  // unix ns of the latest answer naming it; 0 if none

	id          uint32 // stable, for the asker table
	build       uint64 // the latest build that used this state
	seen        bool   // a report has been taken in
	eligible    bool   // in the previous build
	slowStart   int64  // unix ns when the current slow start began; 0 if none
	updated     time.Time
	accepted    int64
	connections int64
	// The load model as of the latest report: connections then, and the
	// ledger counters then (answers counted since belong to the prediction).
	conn         float64
	base1, base2 float64
	shard        int32 // shards mode: the shard whose counter base1 refers to
}

// paceShards spreads a chain's pace over this many cache lines, by asker:
// each fresh answer to a known asker updates the pace, and one shared line
// would bounce between every core answering. A shard is the pace of the
// askers that hash to it; in a failure wave every resolver's wait shrinks
// at once, so each shard sees it as the whole would.
const paceShards = 16

type paceShard struct {
	pace
	_ [56]byte // a cache line of its own
}

// pace returns the pace of key's askers.
func (c *chain) pace(key uint64) *pace { return &c.paces[(mix(key)>>32)%paceShards].pace }

// shardState is the part of a shard that outlives one Pool.
type shardState struct {
	answers atomic.Uint64 // clients expected from its answers, in 1/ledgerUnit
	rr      atomic.Uint64 // rotation across its LBs
	id      uint32
	build   uint64 // the latest build that saw the shard
}

// chain is what successive Pools built from one another share.
type chain struct {
	mode      Mode
	nextID    uint32
	askers    *askerTable
	paces     [paceShards]paceShard
	rr        atomic.Uint64 // round-robin position (nodes mode)
	learn     learner
	lastBuild int64
	waveUntil int64  // see Pool.waveUntil
	build     uint64 // counts NewPool calls
	// Builder only: the states of the latest build's targets and LBs.
	targets, lbs map[identity]*targetState
	shards       map[string]*shardState
}

// entry is one target as one Pool sees it: immutable after NewPool.
type entry struct {
	st        *targetState
	conn      float64 // connections at the latest report (or estimate)
	base1     float64 // st.first at that report
	base2     float64 // st.other at that report
	cap       float64 // full capacity
	ssStart   int64   // slow start: began at (unix ns); ssEnd 0 if none
	ssEnd     int64
	fam       Family
	eligible  bool
	fallback  int8  // fail-open rank: 0 not a fallback, 1 preferred, 2 last resort
	sibling   int32 // an eligible target of the other family on the same node, or -1
	shard     int32 // shards mode: index into Pool.shards, or -1
	knownLoad bool
}

// shard is one shard as one Pool sees it.
type shard struct {
	name     string
	st       *shardState
	lbs      [families][]int32 // eligible LBs (indices into records)
	fallback [families][]int32 // non-draining LBs, eligible first
	nodes    []int32           // indices into nodeEnts
	// Predicted connections are connBase + c*answers; the capacity is
	// capFull plus the slow-starting nodes' ramped capacity.
	connBase float64
	connRep  float64 // reported connections of the eligible nodes
	capFull  float64
	capElig  float64 // full capacity of the eligible nodes
	ramping  []int32 // eligible nodes in slow start
	eligible bool    // has an eligible node
	fbNodes  bool    // has a non-draining node
	connAll  float64 // over non-draining nodes, for fail-open
	capAll   float64
}

// Pool is the immutable state one health snapshot gives a pool of targets,
// plus the answer ledger it shares with the Pools built before and after
// it. Build a new one with NewPool for every snapshot; Choose and the other
// methods may be called concurrently with each other and with NewPool.
type Pool struct {
	cfg     Config
	ch      *chain
	records []health.Target // what Choose's indices refer to
	ents    []entry         // parallel to records
	hot     []hot           // parallel to records
	byID    map[uint32]int32

	elig     [families][]int32 // eligible records per family
	fallback [families][]int32 // fail-open candidates per family, best rank first
	hasElig  bool              // some record is eligible in some family

	// shards mode
	nodes      []health.Target
	nodeEnts   []entry
	shards     []shard
	shardElig  [families][]int32
	shardFB    [families][]int32
	shardByID  map[uint32]int32
	shardIdx   map[string]int32 // by name
	meanShardC float64

	c1, c2   float64 // predicted clients per first / later answer position
	meanUtil float64 // over eligible targets (or shards), at build
	equalCap bool    // no capacity known: balance connections
	maxCap   float64
	ttlMax   int64 // longest TTL an answer carries, ns
	ttlMin   int64 // shortest TTL jitter gives, ns: any shorter was adapted
	// waveUntil is when the failure wave of the latest target to turn
	// ineligible or disappear is over (unix ns; see adapt).
	waveUntil int64
}

// NewPool builds the state for one snapshot of a pool: targets are the
// service's instances and, in shards mode, lbs the shards' load balancers
// (nil in nodes mode). prev is the Pool this one replaces, or nil; the
// answer ledger, slow starts, the asker table and the learned scale carry
// over from it by target identity (node and service ID), so a rebuild never
// resets them. Calls that share a prev chain must not run concurrently.
// cfg must have passed Validate. targets and lbs are kept, not copied: they
// must not change afterwards (health snapshots never do). now is when the
// snapshot was built, on the clock Choose is given.
//
// A load report is taken in when Load.Updated, Accepted or Connections
// differ from the previous build's: the target's prediction restarts from
// the reported connections, and the growth of Accepted since its previous
// report, set against the ledger meanwhile, teaches the scale (unless
// Accepted went down: the reporter restarted). A stale load keeps its last
// report plus the ledger since, which grows until the target is chosen less;
// an unknown or malformed one counts as the mean utilisation of the known
// ones plus the ledger since the build. A target that appears, or becomes
// eligible again, after the chain's first build starts a slow start.
func NewPool(cfg Config, targets, lbs []health.Target, prev *Pool, now time.Time) *Pool {
	nowN := now.UnixNano()
	p := &Pool{cfg: cfg}
	p.ttlMax = int64(math.Floor(cfg.TTL.Seconds()*(1+cfg.TTLJitter))) * int64(time.Second)
	p.ttlMin = int64(max(math.Ceil(cfg.TTL.Seconds()*(1-cfg.TTLJitter)), 1)) * int64(time.Second)
	fresh := prev == nil || prev.ch.mode != cfg.Mode
	if fresh {
		p.ch = &chain{mode: cfg.Mode, askers: new(askerTable), shards: map[string]*shardState{}}
		p.ch.learn.init()
	} else {
		p.ch = prev.ch
	}
	p.ch.build++
	dt := float64(nowN-p.ch.lastBuild) / float64(time.Second)
	if p.ch.lastBuild == 0 || dt < 0 {
		dt = 0
	}
	p.ch.lastBuild = nowN
	p.ch.learn.decay(dt, cfg.LearnWindow.Seconds())

	caps := capacities(cfg, targets)
	p.equalCap = caps.equal
	if cfg.Mode == Nodes {
		p.records = targets
		p.ents = p.buildEntries(targets, &p.ch.targets, caps, nowN, fresh, nil, true)
	} else {
		p.nodes = targets
		p.shardIdx = map[string]int32{}
		shardOf := p.assignShards(targets, lbs)
		p.nodeEnts = p.buildEntries(targets, &p.ch.targets, caps, nowN, fresh, shardOf, true)
		p.records = lbs
		p.ents = p.buildEntries(lbs, &p.ch.lbs, capacities(cfg, lbs), nowN, fresh, nil, false)
		for i := range p.ents {
			p.ents[i].shard = -1
			if v, ok := lbs[i].Meta[cfg.ShardMeta]; ok {
				p.ents[i].shard = p.shardIndex(v)
			}
		}
	}
	p.waveUntil = p.ch.waveUntil
	p.c1, p.c2 = p.ch.learn.estimate()
	p.byID = make(map[uint32]int32, len(p.ents))
	for i := range p.ents {
		p.byID[p.ents[i].st.id] = int32(i)
	}
	if cfg.Mode == Nodes {
		p.buildNodeViews()
	} else {
		p.buildShards(nowN)
	}
	p.hot = make([]hot, len(p.ents))
	for i := range p.ents {
		e := &p.ents[i]
		p.hot[i].pred.Store(math.Float64bits(p.predicted(e)))
		p.hot[i].cap, p.hot[i].ramp = float32(e.cap), e.ssEnd != 0
	}
	return p
}

// hot is what pick reads of a candidate, kept apart from its entry and
// packed 16 to a cache line pair: sampling 32 targets of 50,000 then reads a
// few adjacent lines of one array, not an entry and a targetState scattered
// over the heap for each (two cache misses a candidate made a choice cost
// 6 µs).
type hot struct {
	// pred is predicted(e) as float64 bits, counted up by account; a build
	// sets it from the ledger, so an answer counted on the previous Pool
	// while this one was built is only missed until the next build.
	pred atomic.Uint64
	cap  float32 // full capacity
	ramp bool    // in slow start at build: capacity(e, now) tells how far
}

// add counts d more predicted connections.
func (h *hot) add(d float64) {
	for {
		old := h.pred.Load()
		if h.pred.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+d)) {
			return
		}
	}
}

// capSet resolves capacities: a target's own, else the configured default,
// else the mean of the known ones; with none known all count as 1, so that
// connections themselves are balanced.
type capSet struct {
	def   float64
	equal bool
}

func capacities(cfg Config, ts []health.Target) capSet {
	if cfg.Capacity > 0 {
		return capSet{def: float64(cfg.Capacity)}
	}
	var sum float64
	n := 0
	for i := range ts {
		if c := ts[i].Load.Capacity; c > 0 {
			sum += float64(c)
			n++
		}
	}
	if n == 0 {
		return capSet{def: 1, equal: true}
	}
	return capSet{def: sum / float64(n)}
}

func (c capSet) of(t *health.Target) float64 {
	if c.equal {
		return 1
	}
	if t.Load.Capacity > 0 {
		return float64(t.Load.Capacity)
	}
	return c.def
}

// buildEntries takes in targets: identity, reports, learning (if learn),
// slow start. states holds the previous build's states by identity and is
// replaced by this one's. shardOf, in shards mode, gives each target's
// shard index (or -1); the ledger counter of a node is then its shard's.
func (p *Pool) buildEntries(ts []health.Target, states *map[identity]*targetState, caps capSet, now int64, fresh bool, shardOf []int32, learn bool) []entry {
	ents := make([]entry, len(ts))
	prevStates := *states
	next := make(map[identity]*targetState, len(ts))
	var shardCap []float64 // capacity of each shard's eligible nodes
	if shardOf != nil {
		shardCap = make([]float64, len(p.shards))
		for i := range ts {
			if shardOf[i] >= 0 && ts[i].Eligible() {
				shardCap[shardOf[i]] += caps.of(&ts[i])
			}
		}
	}
	ss := int64(p.cfg.SlowStart)
	for i := range ts {
		t := &ts[i]
		id := identity{t.Node, t.ServiceID}
		st := prevStates[id]
		isNew := st == nil || st.build == p.ch.build // new, or a duplicate in ts
		if isNew {
			st = &targetState{id: p.ch.nextID, shard: -1}
			p.ch.nextID++
		}
		st.build = p.ch.build
		if _, dup := next[id]; !dup {
			next[id] = st
		}
		e := &ents[i]
		e.st, e.fam, e.sibling, e.shard = st, familyOf(t), -1, -1
		e.cap = caps.of(t)
		e.eligible = t.Eligible() && e.fam != AnyFamily
		if shardOf != nil {
			e.shard = shardOf[i]
		}

		// Slow start: a target that appears, or becomes eligible again,
		// after the chain's first build.
		if e.eligible && !fresh && ss > 0 && (isNew || !st.eligible) {
			st.slowStart = now
		}
		if st.eligible && !e.eligible && !isNew && learn {
			p.ch.waveUntil = now + waveLength // its clients will reconnect
		}
		st.eligible = e.eligible
		if st.slowStart != 0 && now-st.slowStart < ss {
			e.ssStart, e.ssEnd = st.slowStart, st.slowStart+ss
		} else {
			st.slowStart = 0
		}

		// The ledger counters this target's prediction reads.
		n1, n2 := float64(st.first.Load()), float64(st.other.Load())
		if shardOf != nil {
			n1, n2 = 0, 0
			if e.shard >= 0 {
				n1 = float64(p.shards[e.shard].st.answers.Load())
			}
			if e.shard != st.shard { // moved shard: the old base means nothing
				st.shard, st.base1, st.base2, st.seen = e.shard, n1, 0, false
			}
		}
		l := &t.Load
		switch l.State {
		case health.LoadKnown, health.LoadStale:
			e.knownLoad = true
			isReport := !st.seen || !l.Updated.Equal(st.updated) || l.Accepted != st.accepted || l.Connections != st.connections
			if isReport {
				// A node's share of its shard's answers is its part of the
				// eligible capacity; a shard with none (drained, or all
				// critical, but still reporting) gives no sample.
				shareKnown := shardOf == nil || e.shard < 0 || shardCap[e.shard] > 0
				if learn && shareKnown && st.seen && l.Accepted >= st.accepted && (l.Accepted > 0 || st.accepted > 0) {
					// The reporter did not restart: Accepted grew by the
					// clients that arrived since its previous report.
					x1, x2 := n1-st.base1, n2-st.base2
					if shardOf != nil && e.shard >= 0 {
						x1 *= e.cap / shardCap[e.shard]
					}
					p.ch.learn.add(x1/ledgerUnit, x2/ledgerUnit, float64(l.Accepted-st.accepted))
				}
				st.seen, st.updated, st.accepted, st.connections = true, l.Updated, l.Accepted, l.Connections
				st.conn, st.base1, st.base2 = float64(l.Connections), n1, n2
			}
			e.conn, e.base1, e.base2 = st.conn, st.base1, st.base2
		default:
			// Unknown or malformed load: assume the mean utilisation (set
			// once known, below) plus whatever was answered since this build.
			st.seen = false
			e.conn, e.base1, e.base2 = math.NaN(), n1, n2
		}
	}
	for id, st := range prevStates {
		if _, ok := next[id]; !ok && st.eligible && learn {
			p.ch.waveUntil = now + waveLength // gone while eligible: its clients will reconnect
		}
	}
	*states = next
	return ents
}

// fillUnknown gives targets of unknown load the mean utilisation of the
// targets whose load is known, and returns that mean.
func fillUnknown(ents []entry) float64 {
	var conn, capSum float64
	for i := range ents {
		e := &ents[i]
		if e.knownLoad {
			conn += e.conn
			capSum += e.cap
		}
	}
	mean := 0.0
	if capSum > 0 {
		mean = conn / capSum
	}
	for i := range ents {
		if e := &ents[i]; !e.knownLoad {
			e.conn = mean * e.cap
		}
	}
	return mean
}

func (p *Pool) buildNodeViews() {
	p.fillUnknownAndMean(p.ents)
	firstByNode := make(map[string][families]int32, len(p.ents))
	for i := range p.ents {
		e := &p.ents[i]
		p.maxCap = max(p.maxCap, e.cap)
		if !e.eligible {
			if !p.records[i].Draining && e.fam != AnyFamily {
				e.fallback = 2
				if e.knownLoad && p.records[i].Load.State == health.LoadKnown {
					e.fallback = 1 // its reporter is alive: likely up despite a failing check
				}
			}
			continue
		}
		p.hasElig = true
		p.elig[e.fam] = append(p.elig[e.fam], int32(i))
		p.elig[AnyFamily] = append(p.elig[AnyFamily], int32(i))
		f, ok := firstByNode[p.records[i].Node]
		if !ok {
			f = [families]int32{-1, -1, -1}
		}
		if f[e.fam] < 0 {
			f[e.fam] = int32(i)
			firstByNode[p.records[i].Node] = f
		}
	}
	for i := range p.ents {
		e := &p.ents[i]
		if !e.eligible {
			continue
		}
		f := firstByNode[p.records[i].Node]
		switch e.fam {
		case IPv4:
			e.sibling = f[IPv6]
		case IPv6:
			e.sibling = f[IPv4]
		}
	}
	for rank := int8(1); rank <= 2; rank++ {
		for i := range p.ents {
			if e := &p.ents[i]; e.fallback == rank {
				p.fallback[e.fam] = append(p.fallback[e.fam], int32(i))
				p.fallback[AnyFamily] = append(p.fallback[AnyFamily], int32(i))
			}
		}
	}
}

// fillUnknownAndMean fills in unknown loads and sets the mean utilisation
// that Spread is a fraction of: the reported one, which is near enough.
func (p *Pool) fillUnknownAndMean(ents []entry) {
	p.meanUtil = fillUnknown(ents)
	if p.meanUtil <= 0 { // an empty farm: a spread of about one connection
		m := 1.0
		for i := range ents {
			m = max(m, ents[i].cap)
		}
		p.meanUtil = 1 / m
	}
}

// assignShards maps the targets to shard indices, creating the shards that
// targets or LBs name.
func (p *Pool) assignShards(targets, lbs []health.Target) []int32 {
	out := make([]int32, len(targets))
	for i := range targets {
		out[i] = -1
		if v, ok := targets[i].Meta[p.cfg.ShardMeta]; ok {
			out[i] = p.shardIndex(v)
		}
	}
	for i := range lbs {
		if v, ok := lbs[i].Meta[p.cfg.ShardMeta]; ok {
			p.shardIndex(v)
		}
	}
	return out
}

func (p *Pool) shardIndex(name string) int32 {
	if i, ok := p.shardIdx[name]; ok {
		return i
	}
	st := p.ch.shards[name]
	if st == nil {
		st = &shardState{id: p.ch.nextID}
		p.ch.nextID++
		p.ch.shards[name] = st
	}
	st.build = p.ch.build
	p.shards = append(p.shards, shard{name: name, st: st})
	p.shardIdx[name] = int32(len(p.shards) - 1)
	return int32(len(p.shards) - 1)
}

func (p *Pool) buildShards(now int64) {
	fillUnknown(p.nodeEnts)
	for i := range p.nodeEnts {
		e := &p.nodeEnts[i]
		if e.shard < 0 {
			continue
		}
		s := &p.shards[e.shard]
		s.nodes = append(s.nodes, int32(i))
		if p.nodes[i].Draining {
			continue
		}
		s.fbNodes = true
		s.connAll += e.conn
		s.capAll += e.cap
		if !e.eligible {
			continue
		}
		s.eligible = true
		s.connRep += e.conn
		// Predicted connections: conn + c * share * (answers - base); the
		// share is applied below once the shard's capacity is known.
		if e.ssEnd > now {
			s.ramping = append(s.ramping, int32(i))
		} else {
			s.capFull += e.cap
		}
	}
	for name, st := range p.ch.shards { // forget shards no longer named
		if st.build != p.ch.build {
			delete(p.ch.shards, name)
		}
	}
	for si := range p.shards {
		s := &p.shards[si]
		for _, i := range s.nodes {
			if e := &p.nodeEnts[i]; e.eligible {
				s.capElig += e.cap
			}
		}
		for _, i := range s.nodes {
			e := &p.nodeEnts[i]
			if !e.eligible {
				continue
			}
			s.connBase += e.conn - p.c1*(e.cap/s.capElig)*e.base1/ledgerUnit
		}
	}
	for i := range p.ents {
		e := &p.ents[i]
		if e.shard < 0 || e.fam == AnyFamily || p.records[i].Draining {
			continue
		}
		s := &p.shards[e.shard]
		if e.eligible {
			s.lbs[e.fam] = append(s.lbs[e.fam], int32(i))
			s.lbs[AnyFamily] = append(s.lbs[AnyFamily], int32(i))
		}
	}
	for i := range p.ents { // fail-open LBs: eligible ones first
		e := &p.ents[i]
		if e.shard >= 0 && e.fam != AnyFamily && !p.records[i].Draining && !e.eligible {
			e.fallback = 2
		}
	}
	var conn, capSum float64
	n := 0
	p.shardByID = make(map[uint32]int32, len(p.shards))
	for si := range p.shards {
		s := &p.shards[si]
		p.shardByID[s.st.id] = int32(si)
		for f := range families {
			s.fallback[f] = append(append([]int32(nil), s.lbs[f]...), fallbackLBs(p, s, Family(f))...)
			if s.eligible && len(s.lbs[f]) > 0 {
				p.shardElig[f] = append(p.shardElig[f], int32(si))
				p.hasElig = true
			}
			if s.fbNodes && len(s.fallback[f]) > 0 {
				p.shardFB[f] = append(p.shardFB[f], int32(si))
			}
		}
		if s.eligible {
			conn += s.connBase + p.c1*float64(s.st.answers.Load())/ledgerUnit
			capSum += s.capFull
			n++
		}
	}
	if n > 0 && capSum > 0 {
		p.meanUtil = conn / capSum
		p.meanShardC = capSum / float64(n)
	}
	if p.meanUtil <= 0 {
		p.meanUtil = 0.01
	}
	if p.meanShardC <= 0 {
		p.meanShardC = 1
	}
}

func fallbackLBs(p *Pool, s *shard, f Family) []int32 {
	var out []int32
	for i := range p.ents {
		e := &p.ents[i]
		if e.fallback == 2 && &p.shards[e.shard] == s && (f == AnyFamily || e.fam == f) {
			out = append(out, int32(i))
		}
	}
	return out
}

// Records returns what Choose's indices refer to: the targets in nodes
// mode, the load balancers in shards mode. Shared; do not modify.
func (p *Pool) Records() []health.Target { return p.records }

// Config returns the configuration the pool was built with.
func (p *Pool) Config() Config { return p.cfg }

// ClientsPerAnswer returns the learned scale of the ledger: how many clients
// arrive at the target an answer names first, and at each later one, per
// client the ledger expected from the answer (an answer's expected clients
// come from how soon its asker comes back; see Choose). Around 1 for the
// first record means the ledger's sizes are right. A second farmdns
// instance answering the same resolvers raises it: clients of its answers
// arrive too, and each instance sees only some of a resolver's questions.
func (p *Pool) ClientsPerAnswer() (first, later float64) { return p.c1, p.c2 }
