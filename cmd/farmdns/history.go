package main

import (
	"cmp"
	"context"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/farmdns/farmdns/dnsserver"
)

// The status page draws the last historySpan of each pool, one sample every
// sampleEvery: historySlots samples in a fixed ring.
const (
	historySpan  = 15 * time.Minute
	sampleEvery  = 5 * time.Second
	historySlots = int(historySpan / sampleEvery)
	// trackedTargets bounds the targets a pool remembers (the busiest of
	// each sample), so a pool of thousands costs the same as a pool of 64:
	// 64 targets x 180 samples x 4 bytes, under 50 kB a pool.
	trackedTargets = 64
	// drawnTargets is how many of them the page draws; more lines than
	// this cannot be told apart.
	drawnTargets = 20
)

// history keeps the recent balance of every pool, for /status: max/mean and
// each target's connections. The sampler fills it whether or not anyone looks,
// so that the page shows what happened before it was opened.
type history struct {
	mu    sync.Mutex
	pools map[string]*poolHistory // by pool name
}

// poolHistory is one pool's ring of samples. Sample number i lives in slot
// i % historySlots; seq is the number of the next sample.
type poolHistory struct {
	seq   uint64
	at    [historySlots]time.Time
	ratio [historySlots]float32 // max/mean; NaN when there is no mean
	mean  [historySlots]float32 // mean connections of the counted targets; NaN if none
	// untracked counts the targets of the latest sample that were too
	// quiet to be tracked.
	untracked int
	targets   map[targetID]*targetHistory
}

// targetHistory is one target's connections, in the slots of its pool's
// ring; NaN where the sample did not have it (absent, no load report, or
// not among the busiest).
type targetHistory struct {
	last  uint64 // the latest sample that had it
	conns [historySlots]float32
}

// run samples pools every sampleEvery until ctx ends.
func (h *history) run(ctx context.Context, pools func(time.Time) []dnsserver.PoolStatus) {
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			h.record(now, pools(now))
		}
	}
}

// record adds one sample of every pool. Pools that are no longer configured
// are forgotten.
func (h *history) record(now time.Time, pools []dnsserver.PoolStatus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pools == nil {
		h.pools = map[string]*poolHistory{}
	}
	seen := make(map[string]bool, len(pools))
	for _, p := range pools {
		seen[p.Name] = true
		ph := h.pools[p.Name]
		if ph == nil {
			ph = &poolHistory{targets: map[targetID]*targetHistory{}}
			h.pools[p.Name] = ph
		}
		ph.record(now, p.Targets)
	}
	for name := range h.pools {
		if !seen[name] {
			delete(h.pools, name)
		}
	}
}

func (ph *poolHistory) record(now time.Time, ts []dnsserver.TargetStatus) {
	slot := int(ph.seq % uint64(historySlots))
	ph.at[slot] = now
	ratio, mean := balance(ts)
	ph.ratio[slot], ph.mean[slot] = float32(ratio), float32(mean)
	for _, th := range ph.targets {
		th.conns[slot] = float32(math.NaN())
	}

	// The busiest are tracked when there are more than fit.
	top := busiest(ts, trackedTargets)
	inTop := make(map[targetID]bool, len(top))
	for _, t := range top {
		inTop[idOf(t)] = true
	}
	for _, t := range top {
		k := idOf(t)
		th := ph.targets[k]
		if th == nil {
			if len(ph.targets) >= trackedTargets {
				ph.evict(inTop)
			}
			th = &targetHistory{}
			for i := range th.conns {
				th.conns[i] = float32(math.NaN())
			}
			ph.targets[k] = th
		}
		th.conns[slot], th.last = float32(t.Connections), ph.seq
	}
	ph.untracked = 0
	for _, t := range ts {
		if drawable(t) && ph.targets[idOf(t)] == nil {
			ph.untracked++
		}
	}
	ph.seq++

	// A target whose every sample has been overwritten is gone.
	for k, th := range ph.targets {
		if th.last+uint64(historySlots) < ph.seq {
			delete(ph.targets, k)
		}
	}
}

// busiest returns the n busiest drawable targets of ts, busiest first. It
// keeps the n in order as it goes instead of sorting them all: the sampler
// takes a pool of 50,000 targets every sampleEvery.
func busiest(ts []dnsserver.TargetStatus, n int) []dnsserver.TargetStatus {
	top := make([]dnsserver.TargetStatus, 0, n+1)
	for _, t := range ts {
		if !drawable(t) || len(top) == n && busierFirst(t, top[n-1]) > 0 {
			continue
		}
		i, _ := slices.BinarySearchFunc(top, t, busierFirst)
		top = slices.Insert(top, i, t)
		top = top[:min(len(top), n)]
	}
	return top
}

// busierFirst orders targets by connections, most first, then by name.
func busierFirst(a, b dnsserver.TargetStatus) int {
	return cmp.Or(cmp.Compare(b.Connections, a.Connections), strings.Compare(a.Node, b.Node), strings.Compare(a.ServiceID, b.ServiceID))
}

// evict forgets the tracked target seen longest ago that is not in keep. One
// always exists when the table is full and a newcomer is in keep, which
// holds at most trackedTargets.
func (ph *poolHistory) evict(keep map[targetID]bool) {
	var victim targetID
	var last uint64
	for k, th := range ph.targets {
		if keep[k] {
			continue
		}
		if victim == (targetID{}) || th.last < last || th.last == last && k.less(victim) {
			victim, last = k, th.last
		}
	}
	delete(ph.targets, victim)
}

// drawable says whether a target's connections belong on the graph: the
// nodes clients connect to (not the LBs in front of shards), with a
// reported connection count, even if it is stale.
func drawable(t dnsserver.TargetStatus) bool {
	return !t.LB && (t.LoadState == "known" || t.LoadState == "stale")
}

// targetID names a tracked target. A struct, not "node/id": the sampler
// looks up every target of the pool, and building a string for each would
// allocate as many every sample.
type targetID struct{ node, serviceID string }

func idOf(t dnsserver.TargetStatus) targetID { return targetID{t.Node, t.ServiceID} }

func (k targetID) String() string { return k.node + "/" + k.serviceID }

func (k targetID) less(o targetID) bool {
	return cmp.Or(strings.Compare(k.node, o.node), strings.Compare(k.serviceID, o.serviceID)) < 0
}

// balance returns max/mean over the targets that may be answered and whose
// load is current: the busiest target's utilisation over the pool's (total
// connections over total capacity), or over connections alone when a target
// has no capacity. It is 1 when the pool is perfectly even, and NaN when
// there is nothing to compare (no such target, or no connections at all).
func balance(ts []dnsserver.TargetStatus) (ratio, mean float64) {
	var n int
	var conns, capacity, hiUtil, hiConns float64
	capped := true
	for _, t := range ts {
		if t.LB || !t.Eligible || t.LoadState != "known" {
			continue
		}
		c := float64(t.Connections)
		n++
		conns += c
		hiConns = max(hiConns, c)
		if t.Capacity > 0 {
			capacity += float64(t.Capacity)
			hiUtil = max(hiUtil, c/float64(t.Capacity))
		} else {
			capped = false
		}
	}
	switch {
	case n == 0:
		return math.NaN(), math.NaN()
	case conns <= 0:
		return math.NaN(), 0
	case capped:
		return hiUtil / (conns / capacity), conns / float64(n)
	default:
		return hiConns / (conns / float64(n)), conns / float64(n)
	}
}

// poolGraph is what the page draws of one pool, and /status.json returns.
// Sample i was taken at about Start + i*StepSeconds; null marks no value.
type poolGraph struct {
	Start       time.Time     `json:"start"`
	StepSeconds int           `json:"step_seconds"`
	MaxMean     series        `json:"max_mean"`
	Mean        series        `json:"mean_connections"`
	Targets     []targetGraph `json:"targets"` // the busiest, at most drawnTargets
	Hidden      int           `json:"targets_not_drawn"`

	at  []time.Time // of each sample
	now time.Time   // the right edge
}

type targetGraph struct {
	Target      string `json:"target"`
	Connections series `json:"connections"`
	peak        float32
}

// series is a run of samples; NaN is a gap, written null in JSON.
type series []float32

// MarshalJSON writes the series compactly, gaps as null.
func (s series) MarshalJSON() ([]byte, error) {
	b := []byte{'['}
	for i, v := range s {
		if i > 0 {
			b = append(b, ',')
		}
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			b = append(b, "null"...)
			continue
		}
		b = strconv.AppendFloat(b, math.Round(float64(v)*1000)/1000, 'f', -1, 64)
	}
	return append(b, ']'), nil
}

// graph returns the samples of pool name, oldest first; nil if none.
func (h *history) graph(name string, now time.Time) *poolGraph {
	h.mu.Lock()
	defer h.mu.Unlock()
	ph := h.pools[name]
	if ph == nil || ph.seq == 0 {
		return nil
	}
	first := ph.seq - min(ph.seq, uint64(historySlots))
	n := int(ph.seq - first)
	g := &poolGraph{StepSeconds: int(sampleEvery / time.Second), now: now,
		at: make([]time.Time, n), MaxMean: make(series, n), Mean: make(series, n)}
	for i := range n {
		slot := int((first + uint64(i)) % uint64(historySlots))
		g.at[i], g.MaxMean[i], g.Mean[i] = ph.at[slot], ph.ratio[slot], ph.mean[slot]
	}
	g.Start = g.at[0]
	for k, th := range ph.targets {
		tg := targetGraph{Target: k.String(), Connections: make(series, n), peak: float32(math.Inf(-1))}
		for i := range n {
			v := th.conns[int((first+uint64(i))%uint64(historySlots))]
			tg.Connections[i] = v
			if !math.IsNaN(float64(v)) {
				tg.peak = max(tg.peak, v)
			}
		}
		g.Targets = append(g.Targets, tg)
	}
	// The busiest over the window are drawn: a target that failed stays on
	// the graph, with the drop.
	slices.SortFunc(g.Targets, func(a, b targetGraph) int {
		return cmp.Or(cmp.Compare(b.peak, a.peak), cmp.Compare(a.Target, b.Target))
	})
	if len(g.Targets) > drawnTargets {
		g.Hidden = len(g.Targets) - drawnTargets
		g.Targets = g.Targets[:drawnTargets]
	}
	g.Hidden += ph.untracked
	return g
}
