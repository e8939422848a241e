package policy

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
)

func statsOf(p *Pool, now time.Time, node string) TargetStats {
	for _, s := range p.Stats(now) {
		if s.Node == node {
			return s
		}
	}
	return TargetStats{}
}

// report returns ts with target i reporting conns and accepted at d.
func report(ts []health.Target, i int, conns, accepted int64, d time.Duration) []health.Target {
	ts = slices.Clone(ts)
	ts[i].Load.Connections, ts[i].Load.Accepted, ts[i].Load.Updated = conns, accepted, t0.Add(d)
	return ts
}

// TestLedgerAcrossRebuilds: answers counted on one Pool still count on the
// next until the target reports again; a rebuild never resets them.
func TestLedgerAcrossRebuilds(t *testing.T) {
	ts := targets(4)
	p := NewPool(testConfig(), ts, nil, nil, t0)
	choose(t, p, IPv4, 40, time.Second)
	before := statsOf(p, t0.Add(2*time.Second), "node00000")
	if before.Answers == 0 || before.Predicted <= 5000 {
		t.Fatalf("before: %+v", before)
	}
	// Another target changes health: node00000's ledger carries over.
	ts = slices.Clone(ts)
	ts[3].Health = health.HealthWarning
	q := NewPool(testConfig(), ts, nil, p, t0.Add(2*time.Second))
	after := statsOf(q, t0.Add(2*time.Second), "node00000")
	if after.Answers != before.Answers || math.Abs(after.Predicted-before.Predicted) > 1e-9 {
		t.Fatalf("after a rebuild: %+v, before %+v", after, before)
	}
	// Answers on the old Pool (still in use by a query in flight) count too.
	p.Choose(nil, IPv4, 12345, at(2*time.Second))
	if s := statsOf(q, t0.Add(3*time.Second), "node00000"); s.Answers+statsOf(q, t0, "node00001").Answers+
		statsOf(q, t0, "node00002").Answers+statsOf(q, t0, "node00003").Answers != 3*41 {
		t.Fatalf("answers on the old pool lost: %+v", s)
	}
	// Its own report replaces the prediction with the count.
	ts = report(ts, 0, 5100, 5100, 3*time.Second)
	r := NewPool(testConfig(), ts, nil, q, t0.Add(3*time.Second))
	if s := statsOf(r, t0.Add(3*time.Second), "node00000"); s.Predicted != 5100 {
		t.Fatalf("after its report: %+v", s)
	}
}

// TestLearnsClientsPerAnswer: when each answer turns out to bring ten
// clients to its first target, the estimate goes there; a reporter restart
// (Accepted back to zero) teaches nothing and breaks nothing.
func TestLearnsClientsPerAnswer(t *testing.T) {
	cfg := testConfig()
	cfg.Answers = 1
	ts := targets(5)
	p := NewPool(cfg, ts, nil, nil, t0)
	accepted := make([]int64, len(ts))
	for i := range ts {
		accepted[i] = ts[i].Load.Accepted
	}
	key := uint64(0)
	for step := 1; step <= 60; step++ {
		now := time.Duration(step) * time.Second
		for range 20 {
			key++
			dst, _, _ := p.Choose(nil, IPv4, key, at(now))
			accepted[dst[0]] += 10
			ts = report(ts, dst[0], ts[dst[0]].Load.Connections+10, accepted[dst[0]], now)
		}
		p = NewPool(cfg, ts, nil, p, t0.Add(now))
	}
	if c1, _ := p.ClientsPerAnswer(); math.Abs(c1-10) > 0.5 {
		t.Fatalf("learned %.2f clients per answer, want 10", c1)
	}
	// The reporter of target 0 restarts: Accepted drops.
	ts = report(ts, 0, 3000, 7, 61*time.Second)
	p = NewPool(cfg, ts, nil, p, t0.Add(61*time.Second))
	if c1, _ := p.ClientsPerAnswer(); math.Abs(c1-10) > 0.5 {
		t.Fatalf("after a reporter restart: %.2f clients per answer", c1)
	}
	if s := statsOf(p, t0.Add(61*time.Second), "node00000"); s.Predicted != 3000 {
		t.Fatalf("after a reporter restart: %+v", s)
	}
	// And learning resumes from the new counter.
	dst, _, _ := p.Choose(nil, IPv4, 1<<40, at(62*time.Second))
	for dst[0] != 0 {
		dst, _, _ = p.Choose(nil, IPv4, uint64(len(dst))<<41, at(62*time.Second))
	}
	ts = report(ts, 0, 3010, 17, 63*time.Second)
	p = NewPool(cfg, ts, nil, p, t0.Add(63*time.Second))
	if c1, _ := p.ClientsPerAnswer(); math.Abs(c1-10) > 0.5 {
		t.Fatalf("after a sample from the new counter: %.2f clients per answer", c1)
	}
}

// TestSlowStart: a target that joins, or recovers, ramps its capacity from
// the floor to the full over the window; targets of the first build do not.
func TestSlowStart(t *testing.T) {
	cfg := testConfig()
	cfg.SlowStart, cfg.SlowStartFloor = 40*time.Second, 0.1
	ts := targets(3)
	p := NewPool(cfg, ts, nil, nil, t0)
	if s := statsOf(p, t0, "node00000"); s.Capacity != 10000 || !s.SlowStartEnds.IsZero() {
		t.Fatalf("first build: %+v", s)
	}
	joined := append(slices.Clone(ts), target(3, 0, 10000))
	p = NewPool(cfg, joined, nil, p, t0.Add(10*time.Second))
	for _, tc := range []struct {
		at   time.Duration
		want float64
	}{{10, 1000}, {30, 5500}, {50, 10000}, {90, 10000}} {
		if s := statsOf(p, t0.Add(tc.at*time.Second), "node00003"); math.Abs(s.Capacity-tc.want) > 1e-6 {
			t.Errorf("joined at 10s, at %ds: capacity %v, want %v", tc.at, s.Capacity, tc.want)
		}
	}
	// While ramping, it takes answers until its predicted utilisation of
	// the ramped capacity catches up with the others', then its share.
	choose(t, p, IPv4, 3000, 10*time.Second) // until 13 s
	now := t0.Add(13 * time.Second)
	cold, warm := statsOf(p, now, "node00003"), statsOf(p, now, "node00000")
	if u, v := cold.Predicted/cold.Capacity, warm.Predicted/warm.Capacity; math.Abs(u-v) > 0.02 || cold.Predicted > 0.2*warm.Predicted {
		t.Errorf("cold target at %.0f of %.0f, others at %.0f of %.0f", cold.Predicted, cold.Capacity, warm.Predicted, warm.Capacity)
	}
	// Recovery: critical, then passing again, starts a new ramp.
	sick := slices.Clone(joined)
	sick[1].Health = health.HealthCritical
	p = NewPool(cfg, sick, nil, p, t0.Add(100*time.Second))
	p = NewPool(cfg, joined, nil, p, t0.Add(110*time.Second))
	if s := statsOf(p, t0.Add(110*time.Second), "node00001"); s.Capacity != 1000 || !s.SlowStartEnds.Equal(t0.Add(150*time.Second)) {
		t.Errorf("recovered: %+v", s)
	}
	if s := statsOf(p, t0.Add(110*time.Second), "node00000"); s.Capacity != 10000 {
		t.Errorf("a target that stayed up: %+v", s)
	}
}

func TestUnknownLoadGetsTheMean(t *testing.T) {
	ts := targets(3)
	ts[0].Load.Connections, ts[1].Load.Connections = 2000, 4000
	ts[2].Load = health.Load{State: health.LoadUnknown}
	p := NewPool(testConfig(), ts, nil, nil, t0)
	if s := statsOf(p, t0, "node00002"); s.Predicted != 3000 || s.Capacity != 10000 {
		t.Fatalf("unknown load: %+v", s)
	}
}

func TestCapacityDefaults(t *testing.T) {
	ts := targets(2)
	ts[0].Load.Capacity, ts[1].Load.Capacity = 0, 0
	p := NewPool(testConfig(), ts, nil, nil, t0)
	if s := statsOf(p, t0, "node00000"); s.Capacity != 1 {
		t.Errorf("no capacity anywhere: %+v", s)
	}
	cfg := testConfig()
	cfg.Capacity = 300
	if s := statsOf(NewPool(cfg, ts, nil, nil, t0), t0, "node00000"); s.Capacity != 300 {
		t.Errorf("configured default: %+v", s)
	}
	ts[1].Load.Capacity = 800
	if s := statsOf(NewPool(testConfig(), ts, nil, nil, t0), t0, "node00000"); s.Capacity != 800 {
		t.Errorf("mean of the known: %+v", s)
	}
}

// TestLargePoolSpreads: with more targets than candidates, choices sample;
// every target is reached and the emptiest ones are preferred.
func TestLargePoolSpreads(t *testing.T) {
	ts := targets(2000)
	for i := range 100 {
		ts[i*20].Load.Connections = 1000
	}
	p := NewPool(testConfig(), ts, nil, nil, t0)
	first, any := choose(t, p, IPv4, 3000, time.Second)
	low := 0
	for i := range 100 {
		low += first[i*20]
	}
	// 100 of 2000 targets have far more headroom; with 32 candidates a
	// choice sees at least one of them 80% of the time.
	if low < 2000 {
		t.Errorf("emptiest 5%% of targets named first %d times of 3000", low)
	}
	reached := 0
	for _, n := range any {
		if n > 0 {
			reached++
		}
	}
	if reached < 1500 {
		t.Errorf("only %d of 2000 targets named", reached)
	}
}
