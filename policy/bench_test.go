package policy

import (
	"fmt"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
)

// BenchmarkChoose measures one choice, as the query path makes it: a new
// key every time (no sticky repeats), the clock moving on.
func BenchmarkChoose(b *testing.B) {
	for _, n := range []int{10, 1000, 10000, 50000} {
		for _, k := range []int{2, 3} {
			b.Run(fmt.Sprintf("targets=%d/answers=%d", n, k), func(b *testing.B) {
				cfg := testConfig()
				cfg.Answers = k
				p := NewPool(cfg, targets(n), nil, nil, t0)
				p = NewPool(cfg, targets(n), nil, p, t0.Add(time.Second))
				dst := make([]int, 0, MaxAnswers)
				now := at(2 * time.Second)
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					dst, _, _ = p.Choose(dst, IPv4, uint64(i)*0x9e3779b97f4a7c15, now+int64(i)*1000)
				}
			})
		}
	}
}

// BenchmarkChooseParallel is BenchmarkChoose from every core at once: the
// ledger's atomics are shared.
func BenchmarkChooseParallel(b *testing.B) {
	cfg := testConfig()
	p := NewPool(cfg, targets(1000), nil, nil, t0)
	now := at(2 * time.Second)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		dst := make([]int, 0, MaxAnswers)
		var i uint64
		for pb.Next() {
			i++
			dst, _, _ = p.Choose(dst, IPv4, i*0x9e3779b97f4a7c15, now+int64(i)*1000)
		}
	})
}

// BenchmarkNewPool measures a rebuild of a 1,000-target pool.
func BenchmarkNewPool(b *testing.B) {
	cfg := testConfig()
	ts := targets(1000)
	p := NewPool(cfg, ts, nil, nil, t0)
	b.ReportAllocs()
	for i := range b.N {
		p = NewPool(cfg, ts, nil, p, t0.Add(time.Duration(i)*time.Millisecond))
	}
}

// BenchmarkChooseShards measures a choice among 100 shards of 10 nodes
// and 2 LBs each.
func BenchmarkChooseShards(b *testing.B) {
	cfg := testConfig()
	cfg.Mode, cfg.ShardMeta, cfg.Answers = Shards, "shard", 2
	var nodes, lbs []health.Target
	for s := range 100 {
		for n := range 10 {
			t := target(s*10+n, 5000, 10000)
			t.Meta = map[string]string{"shard": fmt.Sprint(s)}
			nodes = append(nodes, t)
		}
		for l := range 2 {
			t := target(100000+s*2+l, 0, 0)
			t.Node, t.Meta = fmt.Sprintf("lb%d-%d", s, l), map[string]string{"shard": fmt.Sprint(s)}
			lbs = append(lbs, t)
		}
	}
	p := NewPool(cfg, nodes, lbs, nil, t0)
	dst := make([]int, 0, MaxAnswers)
	now := at(2 * time.Second)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		dst, _, _ = p.Choose(dst, IPv4, uint64(i)*0x9e3779b97f4a7c15, now+int64(i)*1000)
	}
}
