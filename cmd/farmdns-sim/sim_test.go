package main

import (
	"strings"
	"testing"

	"github.com/farmdns/farmdns/policy"
)

// small is the baseline shrunk to run in well under a second: 10 targets,
// 100 clients/s of 2 min mean lifetime (1,200 connections a target), 10 min
// of simulated time with two failure cycles.
func small(seed uint64) Scenario {
	sc := Baseline(seed)
	sc.Name, sc.Targets, sc.Rate, sc.Lifetime = "small", 10, 100, 120
	sc.Capacity = func(int) int64 { return 2000 }
	sc.Warmup, sc.Steady, sc.Cycles, sc.CycleLen, sc.RejoinAfter = 120, 240, 2, 150, 60
	return sc
}

// TestDefaultPolicyBalances fails when a change to the policy package
// makes the default policy herd. The bounds are loose (the small farm is
// noisier than the baseline: see RESULTS.md for the real figures); the
// figures are logged.
func TestDefaultPolicyBalances(t *testing.T) {
	res := map[policy.Kind]Result{}
	for _, k := range []policy.Kind{policy.LeastLoaded, policy.RoundRobin} {
		sc := small(1)
		sc.Config.Policy = k
		res[k] = Run(sc)
		t.Logf("%v: %s", k, res[k].row())
	}
	ll, rr := res[policy.LeastLoaded], res[policy.RoundRobin]
	if ll.P50 > 1.03 || ll.P99 > 1.06 {
		t.Errorf("least-loaded steady max/mean p50 %.3f p99 %.3f", ll.P50, ll.P99)
	}
	if ll.P99 >= rr.P99 {
		t.Errorf("least-loaded p99 %.3f, round-robin %.3f", ll.P99, rr.P99)
	}
	for i := range ll.FailPeak {
		if ll.FailPeak[i] > 1.15 {
			t.Errorf("cycle %d: peak %.3f after a failure", i, ll.FailPeak[i])
		}
		if ll.ColdFill[i] < 0 || ll.ColdFill[i] > 75 || ll.ColdOver[i] > 0.1 {
			t.Errorf("cycle %d: cold target within 10%% after %.0f s, overshoot %.3f", i, ll.ColdFill[i], ll.ColdOver[i])
		}
	}
}

// TestDeterministic: a seed gives the same run.
func TestDeterministic(t *testing.T) {
	sc := small(7)
	sc.Steady, sc.Cycles = 60, 1
	a, b := Run(sc), Run(sc)
	if a.row() != b.row() || a.Queries != b.Queries {
		t.Fatalf("two runs of one seed differ:\n%s\n%s", a.row(), b.row())
	}
}

func TestRunPrintsTables(t *testing.T) {
	var b strings.Builder
	o := options{scenario: "nope", policy: "all", seed: 1, ttl: -1, ttlMin: -1, herd: -1, answers: -1, slowStart: -1, spread: -1, quiet: true}
	if err := run(&b, o); err == nil {
		t.Error("unknown scenario accepted")
	}
	o.scenario, o.policy = "all", "nope"
	if err := run(&b, o); err == nil {
		t.Error("unknown policy accepted")
	}
	o.policy, o.answers = "all", 0
	if err := run(&b, o); err == nil || !strings.Contains(err.Error(), "answers") {
		t.Errorf("answers 0: %v", err)
	}
}

// short is a scenario of issue 11 cut down to run in seconds, even with
// -race: 10 targets instead of 20, 50 clients/s of 10 min lifetimes (3,000
// connections a target), 400 s of warm-up (round-robin needs most of a
// lifetime to drift from the even start), 5 min of steady state and one
// failure, watched for 1 min.
func short(sc Scenario) Scenario {
	sc.Targets, sc.Rate = 10, 50
	sc.Warmup, sc.Steady, sc.Cycles, sc.CycleLen, sc.RejoinAfter = 400, 300, 1, 60, 60
	return sc
}

// TestIssue11Targets checks the targets of issue 11 in the baseline and
// the wave and ecs scenarios: the default policy keeps the steady max/mean
// p99 within 1.03 and the peak after a failure within 1.06; round-robin
// and naive least-loaded, in the same runs, miss them.
func TestIssue11Targets(t *testing.T) {
	for _, sc := range []Scenario{Baseline(1), Wave(1), ECS(1)} {
		for _, k := range []policy.Kind{policy.LeastLoaded, policy.RoundRobin, policy.NaiveLeastLoaded} {
			t.Run(sc.Name+"/"+k.String(), func(t *testing.T) {
				t.Parallel()
				sc := short(sc)
				sc.Config.Policy = k
				r := Run(sc)
				_, peak := medWorst(r.FailPeak)
				t.Logf("%s | %.1f queries/s", r.row(), r.QPS)
				met := r.P99 <= 1.03 && peak <= 1.06
				switch {
				case k == policy.LeastLoaded && !met:
					t.Errorf("steady p99 %.3f (bound 1.03), failure peak %.3f (bound 1.06)", r.P99, peak)
				case k != policy.LeastLoaded && met:
					t.Errorf("meets the targets it must miss: steady p99 %.3f, failure peak %.3f", r.P99, peak)
				}
			})
		}
	}
}
