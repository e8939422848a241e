package main

import (
	"os"
	"strconv"
	"time"

	"github.com/farmdns/farmdns/policy"
)

// Baseline is the scenario of issue 5: 20 targets of equal capacity, 200
// clients/s with 10 min mean exponential lifetimes (120,000 connections, 60%
// of capacity), 50 Zipf-popular resolvers of which every fifth by rank
// clamps TTLs up to 30 s and every third reorders records, 3 records per
// answer, TTL 1 s, reports every 2 s. The run: 10 min warm-up, 30 min steady
// state measured, target 0 dies at 40 min (its clients reconnect within
// seconds; Consul notices after 5 s), a cold target joins at 45 min, end at
// 70 min.
func Baseline(seed uint64) Scenario {
	cfg := policy.DefaultConfig()
	cfg.Answers = 3
	cfg.TTL = time.Second
	cfg.LearnWindow = time.Duration(envf("LEARN", cfg.LearnWindow.Seconds()) * 1e9)
	cfg.Spread = envf("SPREAD", cfg.Spread)
	cfg.SlowStart = time.Duration(envf("SS", cfg.SlowStart.Seconds()) * 1e9)
	return Scenario{
		Name:    "baseline",
		Targets: 20, Capacity: func(int) int64 { return 10000 },
		Rate: 200, Lifetime: 600,
		Resolvers: 50, ZipfS: 1, ClampTTL: 30, ClampEvery: 5, ReorderEvery: 3, ReorderFrom: 2,
		FirstRecord: 0.9,
		ReportEvery: 2, ReportDelayMin: 0.05, ReportDelay: 0.5,
		DetectDelay: 5, ReconnectMin: envf("RMIN", 1), ReconnectSpread: envf("RSPREAD", 9),
		Instances: 1,
		Warmup:    600, Steady: 1800, Cycles: 5, CycleLen: 420, RejoinAfter: 120,
		Config: cfg, Seed: seed,
	}
}

// Scenarios returns the baseline and its variations.
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
	top := b
	top.Name, top.TopClamps = "top-resolver-clamps", true
	return []Scenario{b, reports15, mixed, heavy, two, burst, top}
}

func envf(k string, d float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(k), 64); err == nil {
		return v
	}
	return d
}
