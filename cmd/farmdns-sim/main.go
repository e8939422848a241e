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

func main() {
	scenario := flag.String("scenario", "all", "scenario name, or all")
	pol := flag.String("policy", "all", "policy name (least-loaded, weighted, round-robin, naive-least-loaded), or all")
	sweep := flag.Bool("sweep", false, "sweep TTL and records per answer for the default policy instead")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	if err := run(os.Stdout, *scenario, *pol, *sweep, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "farmdns-sim:", err)
		os.Exit(2)
	}
}

func run(w io.Writer, scenario, pol string, sweep bool, seed uint64) error {
	if sweep {
		return runSweep(w, seed)
	}
	var kinds []policy.Kind
	for _, k := range []policy.Kind{policy.LeastLoaded, policy.Weighted, policy.RoundRobin, policy.NaiveLeastLoaded} {
		if pol == "all" || pol == k.String() {
			kinds = append(kinds, k)
		}
	}
	if len(kinds) == 0 {
		return fmt.Errorf("unknown policy %q", pol)
	}
	var scs []Scenario
	for _, sc := range Scenarios(seed) {
		if scenario == "all" || scenario == sc.Name {
			scs = append(scs, sc)
		}
	}
	if len(scs) == 0 {
		return fmt.Errorf("unknown scenario %q", scenario)
	}
	fmt.Fprintln(w, "| scenario | policy | max/mean p50 | p99 | max | peak after failure | cold target: s to within 10% | cold overshoot |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, sc := range scs {
		for _, k := range kinds {
			sc := sc
			sc.Config.Policy = k
			start := time.Now()
			r := Run(sc)
			fmt.Fprintf(w, "| %s | %s | %s |\n", sc.Name, k, r.row())
			fmt.Fprintf(os.Stderr, "%s/%s: %d queries, %.1f clients per answer, %.1fs\n", sc.Name, k, r.Queries, r.ClientsPerAns, time.Since(start).Seconds())
		}
	}
	return nil
}

func (r Result) row() string {
	fill := func(v float64) string {
		if v < 0 {
			return "never"
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

func runSweep(w io.Writer, seed uint64) error {
	fmt.Fprintln(w, "| TTL | records | max/mean p50 | p99 | max | peak after failure | cold target: s to within 10% | cold overshoot | queries/s |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, ttl := range []int{1, 5, 30} {
		for _, k := range []int{1, 2, 3} {
			sc := Baseline(seed)
			sc.Config.TTL = time.Duration(ttl) * time.Second
			sc.Config.Answers = k
			start := time.Now()
			r := Run(sc)
			fmt.Fprintf(w, "| %d s | %d | %s | %.1f |\n", ttl, k, r.row(), float64(r.Queries)/(sc.Warmup+sc.Steady+float64(sc.Cycles)*sc.CycleLen))
			fmt.Fprintf(os.Stderr, "ttl %d answers %d: %.1fs\n", ttl, k, time.Since(start).Seconds())
		}
	}
	return nil
}
