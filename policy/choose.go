package policy

import (
	"math"
	"time"
)

// Outcome is what a choice amounts to; the caller turns it into a reply.
type Outcome uint8

const (
	// OutcomeAnswer: the picked targets are eligible; answer with them.
	OutcomeAnswer Outcome = iota
	// OutcomeFailOpen: nothing is eligible and on_empty is fail-open; the
	// picked targets are the least bad ones (critical, never draining).
	// Answer with them, and count it: the farm is down.
	OutcomeFailOpen
	// OutcomeNoData: answer with no records (NOERROR, SOA in authority). The
	// name exists; either nothing is eligible in this address family while
	// something is in another, or on_empty is nodata, or fail-open found
	// nothing that is not draining.
	OutcomeNoData
	// OutcomeServFail: nothing is eligible and on_empty is servfail.
	OutcomeServFail
)

var outcomeNames = []string{"answer", "fail-open", "nodata", "servfail"}

// String returns a lower-case name for metrics labels and logs.
func (o Outcome) String() string { return name(outcomeNames, int(o)) }

// Choose picks the records for one answer and counts them in the ledger.
// It appends to dst[:0] (give it a slice of capacity Config.Answers and it
// never allocates) indices into Records(), best first: most clients use the
// first record. fam restricts the choice to one address family (IPv4 for A,
// IPv6 for AAAA, AnyFamily for SRV). now is the time in Unix nanoseconds.
// ttl is the answer's TTL in seconds, jittered.
//
// key identifies the asker: a hash of the client's address (or ECS subnet)
// and the query name, no time bucket needed. The pool remembers recent keys
// (a lossy table shared along the chain of Pools) for two things. For
// Config.StickyWindow after a key's choice, the same key gets the same nodes
// again, mapped to the asked family by node name, so the A and AAAA answers
// of one client name the same nodes (Happy Eyeballs then cannot undo the
// choice); a rare collision in the table loses that, never correctness. And
// how soon a key comes back after its answer expired tells how many clients
// its answers bring: the ledger counts an answer to a busy resolver as many
// clients, one to an idle resolver as one. Every call is counted, sticky or
// not: the learned scale (ClientsPerAnswer) is calibrated against exactly
// what was counted, so an A/AAAA pair that brings one client counts twice
// and the scale halves, for all targets alike.
//
// When no target is eligible, Config.OnEmpty decides. Fail-open answers
// with the least bad targets: never draining ones; critical ones whose load
// report is fresh (their reporter is alive, so probably the node is) before
// those with a stale or no report; the least loaded first. When the pool
// has eligible targets but none in fam, the outcome is OutcomeNoData
// whatever OnEmpty says: the name exists, without records of that type.
//
// In shards mode, the indices name LBs of a single shard (never mixed),
// rotated from one answer to the next.
func (p *Pool) Choose(dst []int, fam Family, key uint64, now int64) (picked []int, ttl uint32, out Outcome) {
	return p.ChooseN(dst, fam, key, now, p.cfg.Answers)
}

// ChooseN is Choose for an answer with room for at most n records (n at
// least 1): the ledger must count only the records a client is sent.
func (p *Pool) ChooseN(dst []int, fam Family, key uint64, now int64, n int) (picked []int, ttl uint32, out Outcome) {
	n = max(1, min(n, p.cfg.Answers))
	dst = dst[:0]
	if fam >= families {
		return dst, 0, OutcomeNoData
	}
	r := newRNG(key ^ mix(uint64(now)) ^ p.cfg.Seed)
	ttl = p.ttl(&r)
	if p.cfg.Mode == Shards {
		return p.chooseShard(dst, fam, key, now, &r, ttl, n)
	}
	list := p.elig[fam]
	if len(list) == 0 {
		if out, ok := p.emptyOutcome(); ok {
			return dst, ttlFor(out, ttl), out
		}
		list = p.fallback[fam]
		if len(list) == 0 {
			return dst, ttl, OutcomeNoData
		}
		dst = p.pick(dst, list, min(n, len(list)), &r, now, true, 1)
		p.account(dst, now, 1)
		return dst, ttl, OutcomeFailOpen
	}
	k := min(n, len(list))
	var a asker
	p.ch.askers.load(key, now, int64(p.cfg.TTL), &a)
	var size, wait float64
	if p.sticky(&a, key, now) {
		// The same asker again, e.g. the AAAA question after the A one.
		dst = p.fromIDs(dst, a.ids[:a.n], fam, k)
		if len(dst) > 0 { // and with the TTL it had
			size = a.sizeAgain(p.ch.pace(key))
			ttl = uint32(a.ttl / int64(time.Second))
		}
	}
	fresh := len(dst) == 0
	if fresh {
		size, wait = a.size(now, int64(ttl)*int64(time.Second), p.ch.pace(key))
		ttl, size = p.adapt(ttl, size, wait, a.found && a.ttl < p.ttlMin, now)
	}
	if len(dst) < k {
		if p.cfg.Policy == RoundRobin {
			dst = p.rotate(dst, list, k)
		} else {
			dst = p.pick(dst, list, k, &r, now, false, size)
		}
	}
	if fresh && !a.slotBusy {
		var ids [MaxAnswers]uint32
		for i, j := range dst {
			ids[i] = p.ents[j].st.id
		}
		p.ch.askers.store(key, now, int64(ttl)*int64(time.Second), wait, ids[:len(dst)])
	}
	p.account(dst, now, size)
	return dst, ttl, OutcomeAnswer
}

// fromIDs appends the eligible targets, in family fam, of the nodes a
// sticky entry names.
func (p *Pool) fromIDs(dst []int, ids []uint32, fam Family, k int) []int {
	for _, id := range ids {
		j, ok := p.byID[id]
		if !ok {
			continue
		}
		if e := &p.ents[j]; fam != AnyFamily && e.fam != fam {
			j = e.sibling
		}
		if j < 0 || !p.ents[j].eligible || contains(dst, int(j)) {
			continue
		}
		if dst = append(dst, int(j)); len(dst) == k {
			break
		}
	}
	return dst
}

// emptyOutcome is the outcome when nothing is eligible in the family asked
// for; ok is false when the pool fails open. If something is eligible in
// another family, the name exists: NODATA.
func (p *Pool) emptyOutcome() (Outcome, bool) {
	switch {
	case p.hasElig || p.cfg.OnEmpty == EmptyNoData:
		return OutcomeNoData, true
	case p.cfg.OnEmpty == EmptyServFail:
		return OutcomeServFail, true
	}
	return OutcomeFailOpen, false
}

// ttlFor is the TTL an outcome is answered with: none for SERVFAIL.
func ttlFor(out Outcome, ttl uint32) uint32 {
	if out == OutcomeServFail {
		return 0
	}
	return ttl
}

const (
	// waveClients replaces HerdClients for waveLength after a target turns
	// ineligible or disappears: its clients are about to reconnect, and
	// every resolver's answers are about to carry more of them than its
	// past questions tell.
	waveClients = 2
	waveLength  = int64(20 * time.Second)
	// After a TTL 0 answer, the asker's next question is mostly another
	// client's rather than the AAAA after the A of the same one: the sticky
	// window shrinks to this fraction of the asker's usual gap between
	// questions (at today's pace).
	stickyZeroTTL = 0.25
)

// adapt returns the TTL for a fresh answer expected to bring size clients
// (in the ledger's terms) at the pool's TTL ttl, to an asker whose mean
// wait from expiry to question is wait ns (0: unknown), and the size at the
// TTL returned: the longest TTL, not under TTLMin, at which the answer
// brings at most HerdClients (or waveClients during a failure wave).
// Round-robin and naive least-loaded keep a fixed TTL, as the baselines
// they are. An asker whose previous answer was shortened (short) keeps a
// shortened TTL until its answers would bring under half the limit: near
// the limit, the noise of its waits would otherwise flip it back to the
// full TTL now and then, and a wave that meets such an answer is herded.
//
// The asker's own rate, 1/wait, decides as well as size: size includes the
// pool-wide pace, which reads low in a steady state (an asker's smoothed
// wait underestimates its mean), and a busy asker must not look quiet.
func (p *Pool) adapt(ttl uint32, size, wait float64, short bool, now int64) (uint32, float64) {
	limit := p.cfg.HerdClients
	if now < p.waveUntil {
		limit = min(limit, waveClients)
	}
	if ttl == 0 || p.cfg.Policy == RoundRobin || p.cfg.Policy == NaiveLeastLoaded {
		return ttl, size
	}
	rate := (size - 1) / float64(ttl) // clients a second
	if wait > 0 {
		rate = max(rate, float64(time.Second)/max(wait, minWait))
	}
	full := 1 + float64(ttl)*rate
	if full <= limit && !(short && full > limit/2) {
		return ttl, size
	}
	t := max(min(math.Floor((limit-1)/rate), float64(ttl)-1), p.cfg.TTLMin.Seconds())
	if t >= float64(ttl) {
		return ttl, size
	}
	return uint32(t), 1 + t*(size-1)/float64(ttl)
}

// sticky reports whether the asker's latest fresh choice is to be repeated.
func (p *Pool) sticky(a *asker, key uint64, now int64) bool {
	if !a.found {
		return false
	}
	w := int64(p.cfg.StickyWindow)
	if a.ttl == 0 && a.wait > 0 {
		w = min(w, int64(stickyZeroTTL*a.wait/math.Exp(p.ch.pace(key).load())))
	}
	return now-a.at < w
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// ledgerUnit is the ledger's fixed point: answers are counted in units of
// 1/16 of an expected client.
const ledgerUnit = 16

// account counts an answer expected to bring size clients in the ledger.
func (p *Pool) account(dst []int, now int64, size float64) {
	w := uint64(size*ledgerUnit + 0.5)
	for pos, j := range dst {
		st := p.ents[j].st
		c := p.c2
		if pos == 0 {
			st.first.Add(w)
			c = p.c1
		} else {
			st.other.Add(w)
		}
		p.hot[j].add(c * float64(w) / ledgerUnit)
		st.count.Add(1)
		st.last.Store(now)
	}
}

// ttl jitters the TTL by up to ±TTLJitter in whole seconds, rounding at
// random so that the mean stays the TTL. The bound is strict: a TTL too
// short for a whole second of jitter (under 10 s at 10%) is not jittered,
// since a 1 s TTL stretched to 2 s would double the herd a busy resolver's
// answer sends to its first record.
func (p *Pool) ttl(r *rng) uint32 {
	t := p.cfg.TTL.Seconds()
	if t == 0 {
		return 0 // ttl: 0s: no resolver caches the answer, every client gets a choice
	}
	if j := p.cfg.TTLJitter; j > 0 {
		lo, hi := math.Ceil(t*(1-j)), math.Floor(t*(1+j))
		x := math.Floor(t*(1+j*(2*r.float()-1)) + r.float())
		t = min(max(x, lo), hi)
	}
	return uint32(max(t, 1))
}

// rotate appends the next k targets of list in round-robin order.
func (p *Pool) rotate(dst []int, list []int32, k int) []int {
	m := uint64(len(list))
	c := p.ch.rr.Add(1) - 1
	for j := uint64(0); j < m && len(dst) < k; j++ {
		if i := int(list[(c+j)%m]); !contains(dst, i) {
			dst = append(dst, i)
		}
	}
	return dst
}

// predicted returns the connections e is expected to hold once the clients
// of the answers counted since its latest report have arrived.
func (p *Pool) predicted(e *entry) float64 {
	return e.conn + (p.c1*(float64(e.st.first.Load())-e.base1)+p.c2*(float64(e.st.other.Load())-e.base2))/ledgerUnit
}

// capacity returns e's capacity at now, ramped during slow start.
func (p *Pool) capacity(e *entry, now int64) float64 {
	if e.ssEnd <= now {
		return e.cap
	}
	f := float64(now-e.ssStart) / float64(e.ssEnd-e.ssStart)
	return e.cap * min(max(p.cfg.SlowStartFloor+(1-p.cfg.SlowStartFloor)*f, p.cfg.SlowStartFloor), 1)
}

// pick appends up to k targets from list, best first, by the pool's policy
// (or, if fallback, by fail-open rank, then predicted utilisation). Each
// candidate gets a score; the k lowest win. size is the clients the answer
// is expected to bring: least-loaded ranks targets by their utilisation
// once those arrive, so a big answer goes to a big target.
func (p *Pool) pick(dst []int, list []int32, k int, r *rng, now int64, fallback bool, size float64) []int {
	var top topK
	top.k = k - len(dst)
	spread := p.cfg.Spread * p.meanUtil
	add := 0.0
	if !p.equalCap {
		add = size * p.c1
	}
	s := newSampler(len(list), p.cfg.Candidates, r)
	var idx [gather]int32
	var pred [gather]float64
	for {
		// A chunk of candidates' indices, then their hot records, are read
		// before any is scored: those loads do not wait on one another, so
		// their cache misses overlap (a 50,000-target pool's list and hot
		// array do not stay in cache).
		m := 0
		for ; m < gather; m++ {
			n, ok := s.next()
			if !ok {
				break
			}
			idx[m] = list[n]
		}
		if m == 0 {
			break
		}
		for i, j := range idx[:m] {
			pred[i] = math.Float64frombits(p.hot[j].pred.Load())
		}
		for i, j := range idx[:m] {
			if len(dst) > 0 && contains(dst, int(j)) {
				continue
			}
			var score float64
			if h := &p.hot[j]; fallback || p.cfg.Policy == NaiveLeastLoaded {
				score = p.plainScore(j, fallback)
			} else {
				full := float64(h.cap)
				c := full
				if h.ramp {
					c = p.capacity(&p.ents[j], now)
				}
				if p.cfg.Policy == Weighted {
					score = weightedScore(c-pred[i], pred[i]/full, p.equalCap, r)
				} else { // LeastLoaded
					score = (pred[i]+add)/c + spread*r.float()
				}
			}
			top.offer(j, score)
		}
	}
	for i := range top.n {
		dst = append(dst, int(top.idx[i]))
	}
	return dst
}

// gather is how many candidates pick reads at a time.
const gather = 32

// plainScore is pick's score for candidate j when failing open (rank, then
// predicted utilisation) or under the naive policy (reported utilisation).
func (p *Pool) plainScore(j int32, fallback bool) float64 {
	e := &p.ents[j]
	if fallback {
		return float64(e.fallback)*1e9 + p.predicted(e)/e.cap
	}
	return e.conn / e.cap
}

// weightedScore makes the k lowest scores a sample without replacement with
// probability proportional to headroom (Efraimidis and Spirakis: an
// exponential race, Exp(1)/weight). Targets without headroom come last,
// least utilised first; with no capacity known all weigh the same.
func weightedScore(headroom, util float64, equal bool, r *rng) float64 {
	x := -math.Log(1 - r.float())
	switch {
	case equal:
		return x
	case headroom <= 0:
		return 1e12 + util
	}
	return x / headroom
}

// topK keeps the k lowest scores seen, in order.
type topK struct {
	n, k int
	idx  [MaxAnswers]int32
	s    [MaxAnswers]float64
}

func (t *topK) offer(i int32, s float64) {
	if t.k <= 0 || (t.n == t.k && s >= t.s[t.n-1]) {
		return
	}
	at := t.n
	if t.n < t.k {
		t.n++
	} else {
		at = t.n - 1
	}
	for at > 0 && t.s[at-1] > s {
		t.s[at], t.idx[at] = t.s[at-1], t.idx[at-1]
		at--
	}
	t.s[at], t.idx[at] = s, i
}

// sampler visits all of n items if n <= want, else want distinct ones at
// random: a random start and a random stride coprime with n.
type sampler struct {
	n, want, seen, pos, stride int
}

func newSampler(n, want int, r *rng) sampler {
	if n <= want {
		return sampler{n: n, want: n, stride: 1}
	}
	s := sampler{n: n, want: want, pos: r.intn(n), stride: 1 + r.intn(n-1)}
	for gcd(s.stride, n) != 1 {
		s.stride++
		if s.stride == n {
			s.stride = 1
		}
	}
	return s
}

func (s *sampler) next() (int, bool) {
	if s.seen == s.want {
		return 0, false
	}
	i := s.pos
	s.seen++
	s.pos += s.stride
	if s.pos >= s.n {
		s.pos -= s.n
	}
	return i, true
}

// chooseShard is Choose in shards mode: one shard, by the pool's policy
// over shard headroom, then that shard's LBs in rotation.
func (p *Pool) chooseShard(dst []int, fam Family, key uint64, now int64, r *rng, ttl uint32, n int) ([]int, uint32, Outcome) {
	list, out := p.shardElig[fam], OutcomeAnswer
	if len(list) == 0 {
		if empty, ok := p.emptyOutcome(); ok {
			return dst, ttlFor(empty, ttl), empty
		}
		list, out = p.shardFB[fam], OutcomeFailOpen
		if len(list) == 0 {
			return dst, ttl, OutcomeNoData
		}
	}
	si, size := int32(-1), 1.0
	if out == OutcomeAnswer {
		var a asker
		var wait float64
		p.ch.askers.load(key, now, int64(p.cfg.TTL), &a)
		if p.sticky(&a, key, now) {
			if s, ok := p.shardByID[a.ids[0]]; ok && p.shards[s].eligible && len(p.shards[s].lbs[fam]) > 0 {
				si = s
				size = a.sizeAgain(p.ch.pace(key))
				ttl = uint32(a.ttl / int64(time.Second))
			}
		}
		if si < 0 {
			size, wait = a.size(now, int64(ttl)*int64(time.Second), p.ch.pace(key))
			ttl, size = p.adapt(ttl, size, wait, a.found && a.ttl < p.ttlMin, now)
			si = p.pickShard(list, r, now, false)
			if !a.slotBusy {
				p.ch.askers.store(key, now, int64(ttl)*int64(time.Second), wait, []uint32{p.shards[si].st.id})
			}
		}
	} else {
		si = p.pickShard(list, r, now, true)
	}
	s := &p.shards[si]
	lbs := s.lbs[fam]
	if out == OutcomeFailOpen {
		lbs = s.fallback[fam]
	}
	m := uint64(len(lbs))
	c := s.st.rr.Add(1) - 1
	for j := uint64(0); j < m && len(dst) < n; j++ {
		dst = append(dst, int(lbs[(c+j)%m]))
	}
	s.st.answers.Add(uint64(size*ledgerUnit + 0.5))
	p.account(dst, now, size)
	return dst, ttl, out
}

// shardHeadroom returns a shard's capacity over its eligible nodes (ramped
// during slow start) minus their predicted connections.
func (p *Pool) shardHeadroom(s *shard, now int64) float64 {
	c := s.capFull
	for _, i := range s.ramping {
		c += p.capacity(&p.nodeEnts[i], now)
	}
	return c - (s.connBase + p.c1*float64(s.st.answers.Load())/ledgerUnit)
}

func (p *Pool) pickShard(list []int32, r *rng, now int64, fallback bool) int32 {
	if p.cfg.Policy == RoundRobin && !fallback {
		return list[(p.ch.rr.Add(1)-1)%uint64(len(list))]
	}
	var top topK
	top.k = 1
	spread := p.cfg.Spread * p.meanUtil
	sm := newSampler(len(list), p.cfg.Candidates, r)
	for {
		n, ok := sm.next()
		if !ok {
			break
		}
		s := &p.shards[list[n]]
		var score float64
		switch {
		case fallback:
			score = -(s.capAll - s.connAll)
		case p.cfg.Policy == NaiveLeastLoaded:
			score = -(s.capFull - s.connRep)
		case p.cfg.Policy == Weighted:
			score = weightedScore(p.shardHeadroom(s, now), 0, false, r)
		default:
			score = -p.shardHeadroom(s, now)/p.meanShardC + spread*r.float()
		}
		top.offer(list[n], score)
	}
	return top.idx[0]
}

// Weight returns record i's share of new clients for an SRV weight: its
// predicted headroom scaled so the pool's largest capacity is 65535; 0 when
// it has none. Without known capacities, and in shards mode, all weigh 100.
func (p *Pool) Weight(i int, now int64) uint16 {
	if p.cfg.Mode == Shards || p.equalCap || i < 0 || i >= len(p.ents) {
		return 100
	}
	e := &p.ents[i]
	h := p.capacity(e, now) - p.predicted(e)
	if h <= 0 || p.maxCap <= 0 {
		return 0
	}
	return uint16(max(1, min(65535, math.Round(65535*h/p.maxCap))))
}

// exposureEnds is when the last answer naming a target stops being
// served from caches that honour the TTL.
func (p *Pool) exposureEnds(last int64) time.Time {
	if last == 0 {
		return time.Time{}
	}
	return time.Unix(0, last+p.ttlMax)
}
