package policy

import (
	"math"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
)

// choose makes n choices with distinct keys, a millisecond apart from
// start, and returns how often each record was named first and at all.
func choose(t *testing.T, p *Pool, fam Family, n int, start time.Duration) (first, any []int) {
	t.Helper()
	first = make([]int, len(p.Records()))
	any = make([]int, len(p.Records()))
	dst := make([]int, 0, MaxAnswers)
	for i := range n {
		var out Outcome
		dst, _, out = p.Choose(dst, fam, uint64(i+1)*0x9e3779b97f4a7c15, at(start+time.Duration(i)*time.Millisecond))
		if out != OutcomeAnswer {
			t.Fatalf("choice %d: outcome %v", i, out)
		}
		if len(dst) > 0 {
			first[dst[0]]++
		}
		for _, j := range dst {
			any[j]++
		}
	}
	return first, any
}

func TestNeverIneligible(t *testing.T) {
	ts := targets(12)
	ts[1].Health = health.HealthCritical
	ts[2].Draining = true
	ts[3].Health = health.HealthWarning // still eligible
	ts[4].Draining, ts[4].Health = true, health.HealthWarning
	ts[5].Address = netip.Addr{} // no address: never answered
	ts[6].Load = health.Load{State: health.LoadUnknown}
	ts[7].Load.State = health.LoadStale
	ts[8].Load = health.Load{State: health.LoadMalformed, Source: health.SourceKV}
	for _, pol := range []Kind{LeastLoaded, Weighted, RoundRobin, NaiveLeastLoaded} {
		cfg := testConfig()
		cfg.Policy = pol
		p := NewPool(cfg, ts, nil, nil, t0)
		_, any := choose(t, p, IPv4, 2000, 0)
		for i, n := range any {
			if n > 0 && !ts[i].Eligible() || i == 5 && n > 0 {
				t.Errorf("%v: ineligible target %d named %d times", pol, i, n)
			}
		}
		if pol != NaiveLeastLoaded && any[3] == 0 {
			t.Errorf("%v: warning target never named", pol)
		}
	}
}

func TestPicksAreDistinctAndBounded(t *testing.T) {
	for _, n := range []int{1, 2, 3, 50, 5000} {
		for _, k := range []int{1, 3, MaxAnswers} {
			cfg := testConfig()
			cfg.Answers = k
			p := NewPool(cfg, targets(n), nil, nil, t0)
			dst := make([]int, 0, MaxAnswers)
			for i := range 200 {
				dst, _, _ = p.Choose(dst, IPv4, uint64(i), at(time.Duration(i)*time.Second))
				if len(dst) != min(n, k) {
					t.Fatalf("n=%d k=%d: %d picks", n, k, len(dst))
				}
				s := slices.Clone(dst)
				slices.Sort(s)
				if len(slices.Compact(s)) != len(dst) {
					t.Fatalf("n=%d k=%d: repeated picks %v", n, k, dst)
				}
			}
		}
	}
}

func TestLeastLoadedPrefersHeadroom(t *testing.T) {
	ts := targets(10)
	ts[7].Load.Connections = 1000 // far below the others' 5000
	p := NewPool(testConfig(), ts, nil, nil, t0)
	dst, _, _ := p.Choose(nil, IPv4, 1, at(time.Second))
	if dst[0] != 7 {
		t.Fatalf("first pick %d, want the emptiest target 7", dst[0])
	}
	// Utilisation, not connections: twice the capacity, twice the load.
	ts = targets(2)
	ts[0].Load.Connections, ts[0].Load.Capacity = 6000, 20000
	ts[1].Load.Connections, ts[1].Load.Capacity = 4000, 10000
	p = NewPool(testConfig(), ts, nil, nil, t0)
	if dst, _, _ = p.Choose(nil, IPv4, 1, at(time.Second)); dst[0] != 0 {
		t.Fatalf("first pick %d, want the least utilised target 0", dst[0])
	}
}

// TestPredictiveAccounting: between two reports, the answers handed out
// steer the next ones, so a burst of questions spreads over equal targets
// instead of all going to whichever looked emptiest at the report.
func TestPredictiveAccounting(t *testing.T) {
	p := NewPool(testConfig(), targets(10), nil, nil, t0)
	first, _ := choose(t, p, IPv4, 1000, time.Second)
	for i, n := range first {
		if n < 80 || n > 120 {
			t.Errorf("target %d named first %d times of 1000, want about 100", i, n)
		}
	}
	// The naive baseline herds.
	cfg := testConfig()
	cfg.Policy = NaiveLeastLoaded
	p = NewPool(cfg, targets(10), nil, nil, t0)
	if first, _ := choose(t, p, IPv4, 100, time.Second); first[0] != 100 {
		t.Errorf("naive: %v, want all on target 0", first)
	}
}

// TestHotPrediction: the packed copy of each target's prediction that pick
// reads follows the ledger, across choices and a rebuild, in a pool big
// enough to be sampled.
func TestHotPrediction(t *testing.T) {
	ts := targets(500)
	p := NewPool(testConfig(), ts, nil, nil, t0)
	check := func(when string) {
		t.Helper()
		for i := range p.ents {
			want, got := p.predicted(&p.ents[i]), math.Float64frombits(p.hot[i].pred.Load())
			if math.Abs(got-want) > 1e-6*max(1, want) {
				t.Fatalf("%s: target %d: pick reads %v predicted connections, the ledger says %v", when, i, got, want)
			}
		}
	}
	choose(t, p, IPv4, 3000, time.Second)
	check("after 3000 choices")
	p = NewPool(testConfig(), ts, nil, p, t0.Add(5*time.Second))
	check("after a rebuild")
	choose(t, p, IPv4, 3000, 6*time.Second)
	check("after 3000 more")
}

func TestRoundRobinRotates(t *testing.T) {
	cfg := testConfig()
	cfg.Policy, cfg.Answers = RoundRobin, 2
	p := NewPool(cfg, targets(3), nil, nil, t0)
	var got [][]int
	for i := range 4 {
		dst, _, _ := p.Choose(nil, IPv4, uint64(i), at(time.Duration(i)*time.Second))
		got = append(got, dst)
	}
	want := [][]int{{0, 1}, {1, 2}, {2, 0}, {0, 1}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestWeightedFollowsHeadroom(t *testing.T) {
	cfg := testConfig()
	cfg.Policy, cfg.Answers = Weighted, 1
	ts := targets(2)
	ts[0].Load.Connections = 9000 // headroom 1000
	ts[1].Load.Connections = 7000 // headroom 3000
	p := NewPool(cfg, ts, nil, nil, t0)
	first, _ := choose(t, p, IPv4, 2000, 0)
	// The ledger moves headroom as answers go out (one client each until
	// something is learned), so only a loose ratio holds.
	if r := float64(first[1]) / float64(first[0]); r < 2 || r > 4.5 {
		t.Fatalf("first picks %v: ratio %.2f, want about 3", first, r)
	}
}

func TestFamilies(t *testing.T) {
	var ts []health.Target
	for i := range 4 {
		ts = append(ts, target(i, 5000, 10000), v6(target(i, 5000, 10000), i))
	}
	p := NewPool(testConfig(), ts, nil, nil, t0)
	for _, fam := range []Family{IPv4, IPv6} {
		_, any := choose(t, p, fam, 200, 0)
		for i, n := range any {
			if n > 0 && familyOf(&ts[i]) != fam {
				t.Errorf("%v answer named %v", fam, ts[i].Address)
			}
		}
	}
	// A v4-only pool has nothing for AAAA: NODATA whatever on_empty says.
	for _, oe := range []OnEmpty{EmptyFailOpen, EmptyNoData, EmptyServFail} {
		cfg := testConfig()
		cfg.OnEmpty = oe
		p := NewPool(cfg, targets(3), nil, nil, t0)
		if dst, _, out := p.Choose(nil, IPv6, 1, at(0)); out != OutcomeNoData || len(dst) != 0 {
			t.Errorf("%v: AAAA of a v4 pool: %v %v", oe, dst, out)
		}
	}
}

// TestSameKeySameNodes: within the sticky window a key gets the same
// nodes, in the asked family, even across a rebuild; after it, a fresh
// choice.
func TestSameKeySameNodes(t *testing.T) {
	var ts []health.Target
	for i := range 20 {
		ts = append(ts, target(i, 5000, 10000), v6(target(i, 5000, 10000), i))
	}
	cfg := testConfig()
	cfg.Answers = 3
	p := NewPool(cfg, ts, nil, nil, t0)
	nodes := func(p *Pool, dst []int) []string {
		var out []string
		for _, j := range dst {
			out = append(out, p.Records()[j].Node)
		}
		return out
	}
	for key := uint64(1); key < 50; key++ {
		start := time.Duration(key) * time.Second
		a, _, _ := p.Choose(nil, IPv4, key, at(start))
		// Other askers in between move the loads.
		choose(t, p, IPv4, 5, start+time.Millisecond)
		aaaa, _, _ := p.Choose(nil, IPv6, key, at(start+10*time.Millisecond))
		if !slices.Equal(nodes(p, a), nodes(p, aaaa)) {
			t.Fatalf("key %d: A %v, AAAA %v", key, nodes(p, a), nodes(p, aaaa))
		}
		again, _, _ := p.Choose(nil, IPv4, key, at(start+20*time.Millisecond))
		if !slices.Equal(a, again) {
			t.Fatalf("key %d: %v then %v", key, a, again)
		}
	}
	// Across a rebuild (a new report of every target).
	a, _, _ := p.Choose(nil, IPv4, 99, at(time.Minute))
	ts2 := slices.Clone(ts)
	for i := range ts2 {
		ts2[i].Load.Updated = t0.Add(time.Minute)
	}
	q := NewPool(cfg, ts2, nil, p, t0.Add(time.Minute))
	if b, _, _ := q.Choose(nil, IPv4, 99, at(time.Minute+100*time.Millisecond)); !slices.Equal(nodes(p, a), nodes(q, b)) {
		t.Fatalf("across a rebuild: %v then %v", nodes(p, a), nodes(q, b))
	}
	// After the window the key is chosen for afresh: its previous first
	// target now carries its answers in the ledger, so it is not first.
	b, _, _ := q.Choose(nil, IPv4, 99, at(time.Minute+cfg.StickyWindow+time.Millisecond))
	if b[0] == a[0] {
		t.Fatalf("after the window: %v then %v", a, b)
	}
}

func TestOnEmpty(t *testing.T) {
	down := targets(4)
	for i := range down {
		down[i].Health = health.HealthCritical
	}
	down[0].Draining = true
	down[1].Load.State = health.LoadStale // its reporter is gone too
	for _, tc := range []struct {
		onEmpty OnEmpty
		ts      []health.Target
		want    Outcome
		picks   []int
	}{
		// Fail-open: critical but not draining; fresh reports first.
		{EmptyFailOpen, down, OutcomeFailOpen, []int{2, 3, 1}},
		{EmptyNoData, down, OutcomeNoData, nil},
		{EmptyServFail, down, OutcomeServFail, nil},
		{EmptyFailOpen, nil, OutcomeNoData, nil},
		// Everything draining: nothing to fail open to.
		{EmptyFailOpen, func() []health.Target {
			ts := targets(2)
			ts[0].Draining, ts[1].Draining = true, true
			return ts
		}(), OutcomeNoData, nil},
	} {
		cfg := testConfig()
		cfg.OnEmpty = tc.onEmpty
		p := NewPool(cfg, tc.ts, nil, nil, t0)
		dst, _, out := p.Choose(nil, IPv4, 1, at(0))
		if out != tc.want {
			t.Errorf("%v: outcome %v, want %v", tc.onEmpty, out, tc.want)
		}
		if len(dst) > 1 {
			slices.Sort(dst[:2]) // 2 and 3 tie
		}
		if !slices.Equal(dst, tc.picks) {
			t.Errorf("%v: picks %v, want %v", tc.onEmpty, dst, tc.picks)
		}
	}
}

func TestTTLJitter(t *testing.T) {
	for _, tc := range []struct {
		ttl    time.Duration
		jitter float64
		lo, hi uint32
	}{
		{30 * time.Second, 0.1, 27, 33},
		{5 * time.Second, 0.1, 5, 5}, // under a whole second of jitter
		{time.Second, 0.1, 1, 1},
		{10 * time.Second, 0.5, 5, 15},
		{60 * time.Second, 0, 60, 60},
	} {
		cfg := testConfig()
		cfg.TTL, cfg.TTLJitter = tc.ttl, tc.jitter
		p := NewPool(cfg, targets(3), nil, nil, t0)
		var sum float64
		seen := map[uint32]bool{}
		const n = 4000
		for i := range n {
			_, ttl, _ := p.Choose(nil, IPv4, uint64(i), at(time.Duration(i)*time.Minute))
			if ttl < tc.lo || ttl > tc.hi {
				t.Fatalf("ttl %s jitter %v: got %d, want %d..%d", tc.ttl, tc.jitter, ttl, tc.lo, tc.hi)
			}
			seen[ttl] = true
			sum += float64(ttl)
		}
		if len(seen) != int(tc.hi-tc.lo+1) {
			t.Errorf("ttl %s jitter %v: values %v, want all of %d..%d", tc.ttl, tc.jitter, seen, tc.lo, tc.hi)
		}
		if mean := sum / n; math.Abs(mean-tc.ttl.Seconds()) > 0.02*tc.ttl.Seconds() {
			t.Errorf("ttl %s jitter %v: mean %.2f", tc.ttl, tc.jitter, mean)
		}
	}
}

func TestStatsExposure(t *testing.T) {
	ts := targets(3)
	ts[2].Draining = true
	cfg := testConfig()
	cfg.TTL, cfg.TTLJitter = 30*time.Second, 0.1
	p := NewPool(cfg, ts, nil, nil, t0)
	last := at(5 * time.Second)
	p.Choose(nil, IPv4, 1, last)
	st := p.Stats(t0.Add(6 * time.Second))
	if len(st) != 3 {
		t.Fatalf("%d stats", len(st))
	}
	for i, s := range st {
		if s.Node != ts[i].Node || s.Draining != ts[i].Draining || s.Eligible != ts[i].Eligible() {
			t.Errorf("stats %d: %+v", i, s)
		}
		switch {
		case s.Answers == 0 && (!s.LastAnswered.IsZero() || !s.ExposureEnds.IsZero()):
			t.Errorf("never answered %d: %+v", i, s)
		case s.Answers == 1 && (s.LastAnswered.UnixNano() != last || !s.ExposureEnds.Equal(t0.Add(5*time.Second+33*time.Second))):
			t.Errorf("answered %d: %+v", i, s)
		}
		if s.Capacity != 10000 || s.Predicted < 5000 {
			t.Errorf("stats %d: %+v", i, s)
		}
	}
	if st[2].Answers != 0 {
		t.Error("draining target answered")
	}
}

func TestWeight(t *testing.T) {
	ts := targets(3)
	ts[0].Load.Connections = 0
	ts[1].Load.Connections = 10000
	ts[2].Load.Connections, ts[2].Load.Capacity = 5000, 20000
	p := NewPool(testConfig(), ts, nil, nil, t0)
	now := at(time.Second)
	if w := [3]uint16{p.Weight(0, now), p.Weight(1, now), p.Weight(2, now)}; w != [3]uint16{32768, 0, 49151} {
		t.Fatalf("weights %v", w)
	}
}

func TestChooseDoesNotAllocate(t *testing.T) {
	for _, n := range []int{10, 5000} {
		for _, pol := range []Kind{LeastLoaded, Weighted, RoundRobin, NaiveLeastLoaded} {
			cfg := testConfig()
			cfg.Policy = pol
			p := NewPool(cfg, targets(n), nil, nil, t0)
			dst := make([]int, 0, MaxAnswers)
			i := 0
			allocs := testing.AllocsPerRun(500, func() {
				i++
				dst, _, _ = p.Choose(dst, IPv4, uint64(i%50), at(time.Duration(i)*100*time.Millisecond))
			})
			if allocs != 0 {
				t.Errorf("%v, %d targets: %v allocations per choice", pol, n, allocs)
			}
		}
	}
}
