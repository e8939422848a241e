package main

import (
	"time"

	"github.com/farmdns/farmdns/policy"
)

// Baseline is the scenario of issue 5: 20 targets of capacity 10,000; 200
// clients/s with 10 min mean exponential lifetimes (120,000 connections, 60%
// of capacity); 50 resolvers of Zipf popularity (exponent 1: the first has
// 22% of the clients) of which every fifth by rank (13% of the clients)
// clamps TTLs up to 30 s and every third from rank 2 (32% of the clients)
// reorders records in every answer it gives; 90% of clients take the first
// record, the others one at random, and a client whose record is dead tries
// the next; 3 records per answer, TTL 1 s; load reports every 2 s (random
// phase), reaching farmdns 50 to 500 ms later.
//
// The run: 10 min warm-up; 30 min of steady state, measured; then 5 cycles
// of 7 min: a target dies (its clients reconnect 1 to 10 s later, through
// DNS; Consul marks it critical after 5 s), and 2 min later it comes back
// empty, its reporter restarted (a cold target).
func Baseline(seed uint64) Scenario {
	cfg := policy.DefaultConfig()
	cfg.Answers, cfg.TTL = 3, time.Second // as the issue has it (the defaults too)
	return Scenario{
		Name:    "baseline",
		Targets: 20, Capacity: func(int) int64 { return 10000 },
		Rate: 200, Lifetime: 600,
		Resolvers: 50, ZipfS: 1, ClampTTL: 30, ClampEvery: 5, ReorderEvery: 3, ReorderFrom: 2,
		FirstRecord: 0.9,
		ReportEvery: 2, ReportDelayMin: 0.05, ReportDelay: 0.5,
		DetectDelay: 5, ReconnectMin: 1, ReconnectSpread: 9,
		Instances: 1,
		Warmup:    600, Steady: 1800, Cycles: 5, CycleLen: 420, RejoinAfter: 120,
		Config: cfg, Seed: seed,
	}
}

// Scenarios returns the baseline and its variations: load reports every
// 15 s; half the targets of twice the capacity (7,000 and 14,000); Lomax
// lifetimes of shape 1.5 (same mean, infinite variance: most connections
// are short, a few last for days); two farmdns instances that each resolver
// asks in turn, fed the same reports; the clients of a dead target all
// reconnecting within 0.5 to 1.5 s; resolvers that ask from a new address
// every time, so that farmdns cannot size their answers; and the most
// popular resolver clamping TTLs to 30 s as well; and the two scenarios of
// issue 11 (see Wave and ECS).
func Scenarios(seed uint64) []Scenario {
	b := Baseline(seed)
	reports15 := b
	reports15.Name, reports15.ReportEvery = "reports-15s", 15
	mixed := b
	mixed.Name = "mixed-capacity"
	mixed.Capacity = func(i int) int64 {
		if i%2 == 0 {
			return 7000
		}
		return 14000
	}
	heavy := b
	heavy.Name, heavy.Alpha = "heavy-tailed", 1.5
	two := b
	two.Name, two.Instances = "two-instances", 2
	burst := b
	burst.Name, burst.ReconnectMin, burst.ReconnectSpread = "burst-reconnect", 0.5, 1
	anon := b
	anon.Name, anon.NewKeys = "anonymous-resolvers", true
	top := b
	top.Name, top.TopClamps = "top-resolver-clamps", true
	dereg := burst
	dereg.Name, dereg.DetectDelay = "deregister-burst", 0
	return []Scenario{b, reports15, mixed, heavy, two, burst, anon, top, dereg, Wave(seed), ECS(seed), ManyAskers(seed)}
}

// Wave is the baseline in which the busiest target dies and all its
// clients reconnect within one second, all through the most popular
// resolver (22% of new clients, neither clamping nor reordering): a
// resolver's cached answer meets a burst many times its usual traffic.
func Wave(seed uint64) Scenario {
	sc := Baseline(seed)
	sc.Name, sc.FailBusiest = "wave", true
	sc.ReconnectMin, sc.ReconnectSpread, sc.ReconnectVia = 0, 1, 1
	return sc
}

// ECS is the baseline plus one public resolver that carries 30% of all
// clients (the 50 others share the rest, by the same Zipf law) and sends
// EDNS Client Subnet: its clients come from 1,000 subnets, each an asker
// of its own.
func ECS(seed uint64) Scenario {
	sc := Baseline(seed)
	sc.Name, sc.ECSShare, sc.ECSSubnets = "ecs", 0.3, 1000
	return sc
}

// ManyAskers is the wave scenario with 100,000 more askers, each quiet,
// that carry 30% of all clients between them (a public resolver that
// rotates through many source addresses, or ECS subnets): far more keys
// than the asker table has slots, while the busy resolvers must still be
// told from the quiet ones.
func ManyAskers(seed uint64) Scenario {
	sc := Wave(seed)
	sc.Name, sc.ECSShare, sc.ECSSubnets = "wave-100k-askers", 0.3, 100000
	return sc
}
