package main

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestThresholdMoved(t *testing.T) {
	pct := func(p float64) threshold { return threshold{relative: true, percent: p} }
	for _, tc := range []struct {
		th        threshold
		last, now int64
		want      bool
	}{
		{pct(1), 0, 0, false},
		{pct(1), 0, 1, true}, // relative never needs less than one connection
		{pct(1), 10, 11, true},
		{pct(1), 20000, 20199, false},
		{pct(1), 20000, 20200, true},
		{pct(1), 20000, 19800, true}, // down counts too
		{pct(10), 105, 115, false},   // 10% of 105 rounds up to 11
		{pct(10), 105, 116, true},
		{pct(0), 5, 5, false},
		{pct(0), 5, 6, true},
		{threshold{absolute: 50}, 1000, 1049, false},
		{threshold{absolute: 50}, 1000, 950, true},
		{threshold{absolute: 0}, 7, 7, false},
		{threshold{absolute: 0}, 7, 8, true},
	} {
		if got := tc.th.moved(tc.last, tc.now); got != tc.want {
			t.Errorf("%+v moved(%d -> %d) = %v, want %v", tc.th, tc.last, tc.now, got, tc.want)
		}
	}
}

func TestParseThreshold(t *testing.T) {
	for in, want := range map[string]threshold{
		"1%":   {relative: true, percent: 1},
		"0.5%": {relative: true, percent: 0.5},
		"100%": {relative: true, percent: 100},
		"25":   {absolute: 25},
		"0":    {},
	} {
		if got, err := parseThreshold(in); err != nil || got != want {
			t.Errorf("parseThreshold(%q) = %+v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "-1", "x%", "101%", "-1%", "1.5", "NaN%"} {
		if _, err := parseThreshold(in); err == nil {
			t.Errorf("parseThreshold(%q): no error", in)
		}
	}
}

// TestDamper drives the damper with a scripted clock and counts: it is the
// whole write policy, without Consul.
func TestDamper(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := damper{policy: damping{
		minChange:   threshold{relative: true, percent: 10},
		heartbeat:   10 * time.Second,
		minInterval: 2 * time.Second,
	}}
	type step struct {
		at     time.Duration
		count  int64
		reason string // "" means no write
		fail   bool   // the write is attempted but fails
	}
	for i, s := range []step{
		{0, 100, reasonFirst, false},
		{1 * time.Second, 100, "", false},
		{1 * time.Second, 150, "", false},              // moved, but within min_interval
		{2 * time.Second, 150, reasonChange, false},    // min_interval over: write
		{3 * time.Second, 160, "", false},              // +6.7%: below 10%
		{5 * time.Second, 164, "", false},              // +9.3%
		{6 * time.Second, 165, reasonChange, false},    // +10%
		{10 * time.Second, 165, "", false},             // steady
		{16 * time.Second, 166, reasonHeartbeat, true}, // heartbeat; the write fails
		{17 * time.Second, 166, reasonHeartbeat, false},
		{18 * time.Second, 10, "", false}, // big drop within min_interval: waits
		{19 * time.Second, 10, reasonChange, false},
		{29 * time.Second, 10, reasonHeartbeat, false},
	} {
		now := t0.Add(s.at)
		reason, ok := d.due(now, s.count)
		if (s.reason != "") != ok || reason != s.reason {
			t.Fatalf("step %d (%v, %d): due = %q %v, want %q", i, s.at, s.count, reason, ok, s.reason)
		}
		if ok && !s.fail {
			d.wrote(now, s.count)
		}
	}
}

func TestDamperNext(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := damper{policy: damping{minChange: threshold{absolute: 5}, heartbeat: 10 * time.Second, minInterval: time.Second}}
	if !d.next(1).IsZero() {
		t.Error("before the first write, next is now")
	}
	d.wrote(t0, 100)
	if got := d.next(102); !got.Equal(t0.Add(10 * time.Second)) {
		t.Errorf("small move: next %v, want the heartbeat", got.Sub(t0))
	}
	if got := d.next(110); !got.Equal(t0.Add(time.Second)) {
		t.Errorf("big move: next %v, want min_interval", got.Sub(t0))
	}
}

// TestDamperWriteRate simulates one node for an hour of steady traffic with
// churn, and one with a ramp, to show the write rate the README quotes.
func TestDamperWriteRate(t *testing.T) {
	policy := damping{minChange: threshold{relative: true, percent: 1}, heartbeat: 10 * time.Second, minInterval: time.Second}
	simulate := func(count func(sec int) int64, secs int) int {
		d := damper{policy: policy}
		t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		writes := 0
		for s := 0; s < secs; s++ {
			now := t0.Add(time.Duration(s) * time.Second)
			c := count(s)
			if _, ok := d.due(now, c); ok {
				d.wrote(now, c)
				writes++
			}
		}
		return writes
	}
	// Steady: 20,000 connections wandering +-0.5% (a slow sine).
	steady := simulate(func(s int) int64 { return 20000 + int64(100*sinApprox(s)) }, 3600)
	// Ramp: 0 -> 20,000 over ten minutes (33/s), then steady.
	ramp := simulate(func(s int) int64 { return min(int64(s)*33, 20000) }, 3600)
	t.Logf("writes per node-hour: steady %d (%.2f/s), with a 10-minute ramp %d (%.2f/s)", steady, float64(steady)/3600, ramp, float64(ramp)/3600)
	if steady > 3600/10+1 {
		t.Errorf("steady node wrote %d times in an hour, more than the heartbeat rate", steady)
	}
	if ramp > 3600 {
		t.Errorf("ramping node wrote %d times in an hour, more than min_interval allows", ramp)
	}
}

// sinApprox is a cheap triangle wave in [-1, 1] with a 10-minute period.
func sinApprox(s int) float64 {
	p := float64(s%600) / 600
	if p < 0.5 {
		return 4*p - 1
	}
	return 3 - 4*p
}

// TestFigureAgentWriteRate checks the write rates README-agent.md quotes
// for 1,000 nodes with the default damping (heartbeat 10 s, min_interval
// 1 s, min_change 1%), counting every second: the steady floor of 100
// writes/s, with each node's count drifting as λ = 100 connections/s open
// and as many close; the ceiling of 1,000 writes/s when every count moves by
// more than 1% a second; and 547 writes per node-hour with one 10-minute
// ramp from 0 to 20,000. The simulation is seeded, so the bounds are close.
func TestFigureAgentWriteRate(t *testing.T) {
	s, err := parseConfig([]byte("service: {name: ws, port: 8080}\n"))
	if err != nil {
		t.Fatal(err)
	}
	policy := s.damping // the defaults, as shipped
	const (
		nodes  = 1000
		warmUp = 60  // seconds before counting writes: phases spread out
		window = 600 // seconds of writes counted
		lambda = 100 // connections opening per second per node, and closing
	)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rng := rand.New(rand.NewPCG(1, 2))
	// run simulates every node counting once a second (starting at a random
	// phase) and returns the writes per second over the window.
	run := func(step func(node int, count int64) int64) float64 {
		writes := 0
		for n := range nodes {
			d := damper{policy: policy}
			count := int64(20000)
			phase := time.Duration(rng.Int64N(int64(time.Second)))
			for sec := range warmUp + window {
				count = step(n, count)
				now := t0.Add(phase + time.Duration(sec)*time.Second)
				if _, ok := d.due(now, count); ok {
					d.wrote(now, count)
					if sec >= warmUp {
						writes++
					}
				}
			}
		}
		return float64(writes) / window
	}
	// Steady: the net drift of a second is the difference of two Poisson
	// counts of mean λ, near enough normal with variance 2λ.
	steady := run(func(_ int, c int64) int64 {
		return max(0, c+int64(math.Round(rng.NormFloat64()*math.Sqrt(2*lambda))))
	})
	// Churning: every count moves by 2% a second, up or down.
	ceiling := run(func(_ int, c int64) int64 {
		if rng.IntN(2) == 0 {
			return c * 102 / 100
		}
		return c * 98 / 100
	})
	// One node-hour with a ramp: 0 -> 20,000 at 33/s, then steady.
	d := damper{policy: policy}
	ramp := 0
	for sec := range 3600 {
		now, c := t0.Add(time.Duration(sec)*time.Second), min(int64(sec)*33, 20000)
		if _, ok := d.due(now, c); ok {
			d.wrote(now, c)
			ramp++
		}
	}
	t.Logf("1,000 nodes, default damping: steady %.1f writes/s (README: 100), every count moving 2%%/s %.1f writes/s (README ceiling: 1,000); one node-hour with a 10-minute ramp: %d writes (README: 547)",
		steady, ceiling, ramp)
	if steady < 95 || steady > 105 {
		t.Errorf("steady farm: %.1f writes/s; README-agent.md quotes 100 (the heartbeat floor)", steady)
	}
	if ceiling > 1000 || ceiling < 950 {
		t.Errorf("churning farm: %.1f writes/s; README-agent.md quotes a ceiling of 1,000", ceiling)
	}
	if ramp < 520 || ramp > 575 {
		t.Errorf("a ramp: %d writes per node-hour; README-agent.md quotes 547", ramp)
	}
}
