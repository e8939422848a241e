// Command farmdns-sim measures how evenly the policy package spreads
// long-lived connections over a farm, in a deterministic discrete-event
// simulation: Poisson client arrivals, resolvers of Zipf popularity that
// cache answers (some clamping TTLs up to 30 s, some reordering records),
// clients that mostly take the first record, load reports that arrive every
// few seconds, a target failure and a cold target joining. It drives the
// real policy package with the simulated clock and prints markdown tables.
//
//	farmdns-sim                      # every scenario, every policy
//	farmdns-sim -scenario baseline -policy least-loaded
//	farmdns-sim -sweep               # TTL and records per answer, default policy
//	farmdns-sim -policy least-loaded -slow-start 0   # with a setting changed
package main

import (
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/farmdns/farmdns/policy"
)

// options are the command line's.
type options struct {
	scenario, policy string
	sweep            bool
	seed             uint64
	// Overrides of the scenarios' policy configuration; negative: none.
	ttl, ttlMin, slowStart time.Duration
	herd                   float64
	answers                int
	spread                 float64
	quiet                  bool // no timings on stderr
}

func main() {
	var o options
	flag.StringVar(&o.scenario, "scenario", "all", "scenario name, or all")
	flag.StringVar(&o.policy, "policy", "all", "policy (least-loaded, weighted, round-robin, naive-least-loaded), or all")
	flag.BoolVar(&o.sweep, "sweep", false, "sweep TTL and records per answer in the baseline, default policy")
	flag.Uint64Var(&o.seed, "seed", 1, "random seed")
	flag.DurationVar(&o.ttl, "ttl", -1, "override the TTL")
	flag.DurationVar(&o.ttlMin, "ttl-min", -1, "override the shortest adaptive TTL (the TTL: off)")
	flag.Float64Var(&o.herd, "herd", -1, "override the clients an answer may bring before its TTL shrinks")
	flag.IntVar(&o.answers, "answers", -1, "override the records per answer")
	flag.DurationVar(&o.slowStart, "slow-start", -1, "override the slow start window (0: off)")
	flag.Float64Var(&o.spread, "spread", -1, "override the spread")
	flag.Parse()
	if err := run(os.Stdout, o); err != nil {
		fmt.Fprintln(os.Stderr, "farmdns-sim:", err)
		os.Exit(2)
	}
}

// tweak applies the overrides to a scenario's configuration.
func (o options) tweak(c *policy.Config) error {
	if o.ttl >= 0 {
		c.TTL = o.ttl
	}
	if o.ttlMin >= 0 {
		c.TTLMin = o.ttlMin
	}
	if o.herd >= 0 {
		c.HerdClients = o.herd
	}
	if o.answers >= 0 {
		c.Answers = o.answers
	}
	if o.slowStart >= 0 {
		c.SlowStart = o.slowStart
	}
	if o.spread >= 0 {
		c.Spread = o.spread
	}
	return c.Validate()
}

func run(w io.Writer, o options) error {
	if o.sweep {
		return runSweep(w, o)
	}
	var kinds []policy.Kind
	for _, k := range []policy.Kind{policy.LeastLoaded, policy.Weighted, policy.RoundRobin, policy.NaiveLeastLoaded} {
		if o.policy == "all" || o.policy == k.String() {
			kinds = append(kinds, k)
		}
	}
	if len(kinds) == 0 {
		return fmt.Errorf("unknown policy %q", o.policy)
	}
	var scs []Scenario
	for _, sc := range Scenarios(o.seed) {
		if o.scenario == "all" || o.scenario == sc.Name {
			scs = append(scs, sc)
		}
	}
	if len(scs) == 0 {
		return fmt.Errorf("unknown scenario %q", o.scenario)
	}
	fmt.Fprintln(w, "| scenario | policy | max/mean p50 | p99 | max | peak after failure | cold target: s to within 10% | cold overshoot | queries/s |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, sc := range scs {
		for _, k := range kinds {
			sc := sc
			sc.Config.Policy = k
			if err := o.tweak(&sc.Config); err != nil {
				return err
			}
			start := time.Now()
			r := Run(sc)
			fmt.Fprintf(w, "| %s | %s | %s | %.1f |\n", sc.Name, k, r.row(), r.QPS)
			if !o.quiet {
				fmt.Fprintf(os.Stderr, "%s/%s: %d queries, %.2f clients per expected client, %.1fs\n", sc.Name, k, r.Queries, r.ClientsPerAns, time.Since(start).Seconds())
			}
		}
	}
	return nil
}

func (r Result) row() string {
	fill := func(v float64) string {
		if v < 0 {
			return fmt.Sprintf(">%.0f", r.ColdWindow)
		}
		return fmt.Sprintf("%.0f", v)
	}
	fills := slices.Clone(r.ColdFill)
	for i, v := range fills {
		if v < 0 {
			fills[i] = math.Inf(1) // not filled sorts last
		}
	}
	slices.Sort(fills)
	var fm, fw string
	if len(fills) > 0 {
		fm, fw = fill(inf(fills[len(fills)/2])), fill(inf(fills[len(fills)-1]))
	}
	pm, pw := medWorst(r.FailPeak)
	om, ow := medWorst(r.ColdOver)
	return strings.Join([]string{
		fmt.Sprintf("%.3f", r.P50), fmt.Sprintf("%.3f", r.P99), fmt.Sprintf("%.3f", r.Max),
		fmt.Sprintf("%.3f / %.3f", pm, pw), fm + " / " + fw,
		fmt.Sprintf("%+.1f%% / %+.1f%%", 100*om, 100*ow),
	}, " | ")
}

func inf(v float64) float64 {
	if math.IsInf(v, 1) {
		return -1
	}
	return v
}

// medWorst returns the median and the highest value.
func medWorst(v []float64) (float64, float64) {
	if len(v) == 0 {
		return 0, 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2], v[len(v)-1]
}

func runSweep(w io.Writer, o options) error {
	fmt.Fprintln(w, "| TTL | records | max/mean p50 | p99 | max | peak after failure | cold target: s to within 10% | cold overshoot | queries/s |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, ttl := range []int{1, 5, 30} {
		for _, k := range []int{1, 2, 3} {
			sc := Baseline(o.seed)
			if err := o.tweak(&sc.Config); err != nil {
				return err
			}
			sc.Config.TTL = time.Duration(ttl) * time.Second
			sc.Config.Answers = k
			r := Run(sc)
			fmt.Fprintf(w, "| %d s | %d | %s | %.1f |\n", ttl, k, r.row(), r.QPS)
		}
	}
	return nil
}
