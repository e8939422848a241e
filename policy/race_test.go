package policy

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
)

// TestConcurrentChooseAndRebuild runs choices on several goroutines while
// another one rebuilds the pool from changing snapshots, as farmdns does;
// run it with -race. Every answer must name eligible records of one
// snapshot, and no answer may be lost from the ledger.
func TestConcurrentChooseAndRebuild(t *testing.T) {
	for _, mode := range []Mode{Nodes, Shards} {
		cfg := testConfig()
		var lbs []health.Target
		ts := targets(200)
		if mode == Shards {
			cfg = shardConfig()
			ts, lbs = farm(map[string]int64{"a": 5000, "b": 5000, "c": 5000}, map[string]int{"a": 3, "b": 3, "c": 3})
		}
		var cur atomic.Pointer[Pool]
		cur.Store(NewPool(cfg, ts, lbs, nil, t0))
		var clock atomic.Int64
		clock.Store(at(0))
		const choosers, choices, rebuilds = 4, 3000, 300
		var answers atomic.Int64
		var wg sync.WaitGroup
		for g := range choosers {
			wg.Go(func() {
				dst := make([]int, 0, MaxAnswers)
				for i := range choices {
					p := cur.Load()
					var out Outcome
					dst, _, out = p.Choose(dst, IPv4, uint64(g*choices+i%100), clock.Add(int64(time.Millisecond)))
					for _, j := range dst {
						if !p.Records()[j].Eligible() {
							t.Errorf("ineligible record %d", j)
						}
					}
					if out == OutcomeAnswer {
						answers.Add(int64(len(dst)))
					}
				}
			})
		}
		wg.Go(func() {
			for i := range rebuilds {
				next := slices.Clone(ts)
				next[i%len(next)].Health = health.HealthCritical // one target down at a time
				next[(i+1)%len(next)].Load.Connections += int64(i)
				next[(i+1)%len(next)].Load.Accepted += int64(i)
				next[(i+1)%len(next)].Load.Updated = time.Unix(0, clock.Load())
				cur.Store(NewPool(cfg, next, lbs, cur.Load(), time.Unix(0, clock.Load())))
				cur.Load().Stats(time.Unix(0, clock.Load()))
			}
		})
		wg.Wait()
		var counted uint64
		for _, s := range cur.Load().Stats(time.Unix(0, clock.Load())) {
			counted += s.Answers
		}
		if counted != uint64(answers.Load()) {
			t.Errorf("%v: %d answers counted in the ledger, %d handed out", mode, counted, answers.Load())
		}
	}
}
