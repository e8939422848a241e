package policy

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
)

// farm returns shard nodes (three per shard, at the given connections) and
// LBs (lbs[s] of them per shard, IPv4).
func farm(conns map[string]int64, lbs map[string]int) (nodes, balancers []health.Target) {
	i := 0
	for _, s := range []string{"a", "b", "c", "d"} {
		c, ok := conns[s]
		if !ok {
			continue
		}
		for range 3 {
			t := target(i, c, 10000)
			t.Meta = map[string]string{"shard": s}
			nodes = append(nodes, t)
			i++
		}
		for j := range lbs[s] {
			t := target(1000+i*10+j, 0, 0)
			t.Node, t.ServiceID = fmt.Sprintf("lb-%s-%d", s, j), "ws-lb"
			t.Load = health.Load{}
			t.Meta = map[string]string{"shard": s}
			balancers = append(balancers, t)
		}
	}
	return nodes, balancers
}

func shardConfig() Config {
	c := testConfig()
	c.Mode, c.ShardMeta, c.Answers = Shards, "shard", 2
	return c
}

func shardOf(p *Pool, dst []int) string {
	s := ""
	for _, j := range dst {
		m := p.Records()[j].Meta["shard"]
		if s != "" && m != s {
			return "mixed"
		}
		s = m
	}
	return s
}

func TestShardMostHeadroom(t *testing.T) {
	nodes, lbs := farm(map[string]int64{"a": 9000, "b": 5000, "c": 2000}, map[string]int{"a": 2, "b": 3, "c": 2})
	// Shard c has the most headroom but no healthy LB: skipped.
	for i := range lbs {
		if lbs[i].Meta["shard"] == "c" {
			lbs[i].Health = health.HealthCritical
		}
	}
	p := NewPool(shardConfig(), nodes, lbs, nil, t0)
	dst, ttl, out := p.Choose(nil, IPv4, 1, at(time.Second))
	if out != OutcomeAnswer || shardOf(p, dst) != "b" || len(dst) != 2 || ttl != 1 {
		t.Fatalf("got %v (%s) %d %v, want two LBs of shard b", dst, shardOf(p, dst), ttl, out)
	}
}

func TestShardsNeverMixedAndRotate(t *testing.T) {
	nodes, lbs := farm(map[string]int64{"a": 5000, "b": 5000, "c": 5000}, map[string]int{"a": 3, "b": 3, "c": 1})
	lbs[1].Draining = true // lb-a-1
	p := NewPool(shardConfig(), nodes, lbs, nil, t0)
	firstLB := map[string][]int{}
	for i := range 600 {
		dst, _, out := p.Choose(nil, IPv4, uint64(i), at(time.Duration(i)*time.Second))
		s := shardOf(p, dst)
		if out != OutcomeAnswer || s == "mixed" {
			t.Fatalf("choice %d: %v %v", i, dst, out)
		}
		for _, j := range dst {
			if !lbs[j].Eligible() {
				t.Fatalf("choice %d: draining LB %s", i, lbs[j].Node)
			}
		}
		want := min(2, map[string]int{"a": 2, "b": 3, "c": 1}[s])
		if len(dst) != want {
			t.Fatalf("choice %d: %d LBs of shard %s, want %d", i, len(dst), s, want)
		}
		firstLB[s] = append(firstLB[s], dst[0])
	}
	if len(firstLB) != 3 {
		t.Fatalf("shards used: %v", firstLB)
	}
	// From one answer to the next, a shard's LBs take turns in first place.
	for s, firsts := range firstLB {
		for i := 1; i < len(firsts); i++ {
			if s != "c" && firsts[i] == firsts[i-1] {
				t.Fatalf("shard %s: LB %d first twice in a row", s, firsts[i])
			}
		}
	}
}

// TestShardLedger: answers move a shard's predicted headroom, so a run of
// questions spreads over shards of similar headroom.
func TestShardLedger(t *testing.T) {
	nodes, lbs := farm(map[string]int64{"a": 9000, "b": 8900}, map[string]int{"a": 1, "b": 1})
	p := NewPool(shardConfig(), nodes, lbs, nil, t0)
	count := map[string]int{}
	for i := range 2000 {
		dst, _, _ := p.Choose(nil, IPv4, uint64(i), at(time.Duration(i)*time.Second))
		count[shardOf(p, dst)]++
	}
	// b starts 300 connections emptier; after that they take turns.
	t.Logf("answers per shard: %v", count)
	if count["a"] < 700 || count["b"] < count["a"] {
		t.Fatalf("answers per shard: %v", count)
	}
	// A report resets the shard's prediction to the reported loads.
	ts := slices.Clone(nodes)
	for i := range ts {
		ts[i].Load.Updated = t0.Add(time.Hour)
	}
	q := NewPool(shardConfig(), ts, lbs, p, t0.Add(time.Hour))
	for _, s := range q.Stats(t0.Add(time.Hour)) {
		if !s.LB && s.Predicted != float64(map[string]int64{"a": 9000, "b": 8900}[s.Shard]) {
			t.Fatalf("after reports: %+v", s)
		}
	}
}

func TestShardFamiliesAndEmpty(t *testing.T) {
	nodes, lbs := farm(map[string]int64{"a": 9000, "b": 1000}, map[string]int{"a": 2, "b": 2})
	lbs[0].Address = netip.MustParseAddr("2001:db8::a") // shard a has one IPv6 LB
	p := NewPool(shardConfig(), nodes, lbs, nil, t0)
	if dst, _, out := p.Choose(nil, IPv6, 1, at(0)); out != OutcomeAnswer || !slices.Equal(dst, []int{0}) {
		t.Fatalf("AAAA: %v %v", dst, out)
	}
	// No healthy node anywhere: on_empty decides.
	sick := slices.Clone(nodes)
	for i := range sick {
		sick[i].Health = health.HealthCritical
	}
	for _, tc := range []struct {
		oe   OnEmpty
		want Outcome
	}{{EmptyFailOpen, OutcomeFailOpen}, {EmptyNoData, OutcomeNoData}, {EmptyServFail, OutcomeServFail}} {
		cfg := shardConfig()
		cfg.OnEmpty = tc.oe
		p := NewPool(cfg, sick, lbs, nil, t0)
		dst, _, out := p.Choose(nil, IPv4, 1, at(0))
		if out != tc.want || (out == OutcomeFailOpen) != (len(dst) > 0) || shardOf(p, dst) == "mixed" {
			t.Errorf("%v: %v %v", tc.oe, dst, out)
		}
	}
}

func TestShardStickyAndAllocs(t *testing.T) {
	nodes, lbs := farm(map[string]int64{"a": 5000, "b": 5000, "c": 5000, "d": 5000}, map[string]int{"a": 2, "b": 2, "c": 2, "d": 2})
	p := NewPool(shardConfig(), nodes, lbs, nil, t0)
	for key := range uint64(50) {
		now := time.Duration(key) * time.Second
		a, _, _ := p.Choose(nil, IPv4, key, at(now))
		b, _, _ := p.Choose(nil, IPv4, key, at(now+time.Millisecond))
		if shardOf(p, a) != shardOf(p, b) {
			t.Fatalf("key %d: shard %s then %s", key, shardOf(p, a), shardOf(p, b))
		}
	}
	dst := make([]int, 0, MaxAnswers)
	i := 0
	if n := testing.AllocsPerRun(500, func() {
		i++
		dst, _, _ = p.Choose(dst, IPv4, uint64(i%7), at(time.Duration(i)*300*time.Millisecond))
	}); n != 0 {
		t.Errorf("%v allocations per choice", n)
	}
}

// TestShardDrainedAndRestored: a shard whose nodes are all drained (or all
// critical) but keep reporting has no eligible capacity; the reports taken
// in meanwhile must not teach the learner anything absurd. Afterwards the
// ledger still moves headroom, so fresh askers spread over the shards
// instead of herding onto the one that looked emptiest at the last report.
func TestShardDrainedAndRestored(t *testing.T) {
	for _, how := range []string{"draining", "critical"} {
		t.Run(how, func(t *testing.T) {
			// b starts 100 connections per node fuller: 300 per shard, far
			// more than the spread of equals.
			nodes, lbs := farm(map[string]int64{"a": 5000, "b": 5100}, map[string]int{"a": 1, "b": 1})
			cfg := shardConfig()
			cfg.SlowStart = 0 // the ledger alone decides
			p := NewPool(cfg, nodes, lbs, nil, t0)
			choose(t, p, IPv4, 200, time.Second) // answers name both shards
			// Shard a's nodes leave service but report the clients those
			// answers brought.
			drained := slices.Clone(nodes)
			for i := range drained {
				if drained[i].Meta["shard"] != "a" {
					continue
				}
				if how == "draining" {
					drained[i].Draining = true
				} else {
					drained[i].Health = health.HealthCritical
				}
				drained[i].Load.Accepted += 40
				drained[i].Load.Updated = t0.Add(2 * time.Second)
			}
			p = NewPool(cfg, drained, lbs, p, t0.Add(2*time.Second))
			if c1, c2 := p.ClientsPerAnswer(); !(c1 > 0.1 && c1 < 100) || math.IsNaN(c2) || math.IsInf(c2, 0) {
				t.Fatalf("drained: learned %v, %v clients per answer", c1, c2)
			}
			// Restored, with fresh reports at the loads of the start.
			restored := slices.Clone(nodes)
			for i := range restored {
				restored[i].Load.Accepted += 40
				restored[i].Load.Updated = t0.Add(3 * time.Second)
			}
			p = NewPool(cfg, restored, lbs, p, t0.Add(3*time.Second))
			if c1, _ := p.ClientsPerAnswer(); !(c1 > 0.1 && c1 < 100) {
				t.Fatalf("restored: learned %v clients per answer", c1)
			}
			count := map[string]int{}
			for i := range 1000 {
				dst, _, _ := p.Choose(nil, IPv4, uint64(1<<32+i), at(4*time.Second+time.Duration(i)*time.Millisecond))
				count[shardOf(p, dst)]++
			}
			// a takes the first 300 or so, then they take turns.
			if count["a"] < 250 || count["b"] < 250 {
				t.Fatalf("1000 fresh askers after a drain: %v", count)
			}
		})
	}
}
