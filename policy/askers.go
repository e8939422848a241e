package policy

import (
	"math"
	"sync/atomic"
)

// askerSlots is the size of a pool's asker table (80 bytes a slot, 320 KiB
// a pool). An A/AAAA pair is milliseconds apart; at 10,000 questions a
// second another key takes the pair's slot in between about once in 200
// pairs, and the pair is then chosen for twice.
const askerSlots = 4096

// askerTable remembers, per key (an asker: a resolver's address and the
// query name), what the latest fresh choice was, when it was made, with
// which TTL, and how long after its answers expire the asker usually comes
// back. That gives two things:
//
//   - stickiness: within StickyWindow the key gets the same nodes again;
//   - the size of an answer: a resolver that asks again as soon as its
//     cached answer expires has clients waiting all the time, and each of
//     its answers brings about 1 + TTL/wait clients, where wait is the mean
//     time between an expiry and its next question. That is what lets the
//     ledger tell an answer to a big resolver (tens of clients) from one to a
//     small one (one client) at the moment it is handed out, instead of
//     learning it a report later, when the big resolver's clients have all
//     gone to one target.
//
// It is a lossy direct-mapped hash table of seqlocked slots: readers never
// wait (a slot being written reads as a miss), writers never wait (a slot
// another writer holds is not written), and a slot tracking a busy asker is
// not given to another key while that asker is active. It is shared by
// every Pool of a chain and stores stable target IDs rather than indices, so
// a rebuild in the middle of an A/AAAA pair does not split it.
type askerTable struct {
	slots [askerSlots]askerSlot
}

type askerSlot struct {
	seq  atomic.Uint64 // odd while a writer holds the slot
	key  atomic.Uint64
	at   atomic.Int64  // when the latest fresh choice was made (unix ns)
	ttl  atomic.Int64  // the TTL it was given, ns
	wait atomic.Uint64 // float64 bits: mean wait after expiry, ns; 0 unknown
	n    atomic.Uint32
	ids  [MaxAnswers]atomic.Uint32
}

// asker is a copy of one slot.
type asker struct {
	found    bool
	at, ttl  int64
	wait     float64
	n        int
	ids      [MaxAnswers]uint32
	slotBusy bool // the slot holds another key that is still active
}

func (t *askerTable) slot(key uint64) *askerSlot { return &t.slots[mix(key)%askerSlots] }

// load reads key's slot. now decides whether the slot, if another key's, is
// still worth keeping; full is the pool's TTL (ns), against which an asker
// whose TTL was shortened is judged.
func (t *askerTable) load(key uint64, now, full int64, a *asker) {
	s := t.slot(key)
	seq := s.seq.Load()
	if seq&1 != 0 {
		a.slotBusy = true
		return
	}
	k, at, ttl := s.key.Load(), s.at.Load(), s.ttl.Load()
	wait := math.Float64frombits(s.wait.Load())
	n := int(s.n.Load())
	if n > MaxAnswers {
		n = 0
	}
	var ids [MaxAnswers]uint32
	for i := range n {
		ids[i] = s.ids[i].Load()
	}
	if s.seq.Load() != seq {
		a.slotBusy = true
		return
	}
	if k != key || n == 0 {
		// Another key's slot: keep it while that asker is busy (it comes
		// back soon after each expiry, sooner than the pool's TTL if its
		// own was shortened) and recently active.
		ttl = max(ttl, full)
		a.slotBusy = n > 0 && wait > 0 && wait < float64(ttl) && now-at < 4*ttl+int64(10e9)
		return
	}
	a.found, a.at, a.ttl, a.wait, a.n, a.ids = true, at, ttl, wait, n, ids
}

// store records a fresh choice for key.
func (t *askerTable) store(key uint64, now, ttl int64, wait float64, ids []uint32) {
	s := t.slot(key)
	seq := s.seq.Load()
	if seq&1 != 0 || !s.seq.CompareAndSwap(seq, seq+1) {
		return
	}
	s.key.Store(key)
	s.at.Store(now)
	s.ttl.Store(ttl)
	s.wait.Store(math.Float64bits(wait))
	for i, id := range ids {
		s.ids[i].Store(id)
	}
	s.n.Store(uint32(len(ids)))
	s.seq.Store(seq + 2)
}

const (
	waitSmoothing = 0.2  // weight of the newest wait in an asker's mean
	paceSmoothing = 0.05 // weight of the newest sample in the pool's pace
	maxPaceLog    = 2.5  // bounds one sample's ln(usual wait / this wait)
	eulerGamma    = 0.5772156649015329
	idleAfter     = 600e9   // a key silent this long starts over, ns
	minWait       = 1e6     // 1 ms: bounds an answer's size at 1 + TTL/1ms
	maxSize       = 10000.0 // and at this many clients
)

// pace tracks how much faster than usual clients arrive right now, over
// all askers: an exponentially weighted mean of ln(an asker's usual wait /
// its wait this time). When a target fails and its clients reconnect at
// once, every resolver's wait shrinks together, and pace shows it within a
// few dozen questions, long before a load report can. For exponential waits
// the mean of ln(mean/wait) is Euler's constant, which is subtracted, so
// pace is 0 in a steady state.
type pace struct{ bits atomic.Uint64 }

// add folds one sample in and returns the new mean.
func (p *pace) add(x float64) float64 {
	for {
		old := p.bits.Load()
		m := math.Float64frombits(old)
		n := m + paceSmoothing*(x-m)
		if p.bits.CompareAndSwap(old, math.Float64bits(n)) {
			return n
		}
	}
}

func (p *pace) load() float64 { return math.Float64frombits(p.bits.Load()) }

// size returns the expected number of clients an answer to this asker
// brings (1 for an unknown asker: it asked, so at least one client), and
// the asker's updated mean wait to store.
func (a *asker) size(now, ttl int64, pc *pace) (clients, wait float64) {
	if !a.found || now-a.at > idleAfter || now < a.at {
		return 1, 0
	}
	if now < a.at+a.ttl {
		// Asked again before its answer expired: not one caching
		// resolver (several behind one address, or none). Its questions
		// tell nothing about its clients; count this one as one.
		return 1, a.wait
	}
	w := float64(now - a.at - a.ttl)
	if a.wait <= 0 {
		return min(1+float64(ttl)/max(w, minWait), maxSize), w
	}
	x := math.Log(a.wait/max(w, minWait)) - eulerGamma
	speed := math.Exp(pc.add(min(max(x, -maxPaceLog), maxPaceLog)))
	w = waitSmoothing*w + (1-waitSmoothing)*a.wait
	return min(1+float64(ttl)*speed/max(w, minWait), maxSize), w
}

// sizeAgain returns the size the latest fresh choice was counted with
// (near enough: at today's pace), for a sticky repeat of it.
func (a *asker) sizeAgain(pc *pace) float64 {
	if a.wait <= 0 {
		return 1
	}
	return min(1+float64(a.ttl)*math.Exp(pc.load())/max(a.wait, minWait), maxSize)
}
