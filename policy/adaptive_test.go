package policy

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
)

// askEvery has one asker (key) come back after each answer expires, an
// exponential wait of mean gap later (as a resolver whose clients arrive
// at random), from start, n times. It returns the TTLs it was given and
// when it would ask next.
func askEvery(p *Pool, key uint64, start, gap time.Duration, n int) ([]uint32, time.Duration) {
	r := rand.New(rand.NewPCG(key, 1))
	return ask(p, key, start, n, func() time.Duration { return time.Duration(r.ExpFloat64() * float64(gap)) })
}

// askFixed is askEvery with a wait of exactly gap each time.
func askFixed(p *Pool, key uint64, start, gap time.Duration, n int) ([]uint32, time.Duration) {
	return ask(p, key, start, n, func() time.Duration { return gap })
}

func ask(p *Pool, key uint64, start time.Duration, n int, wait func() time.Duration) ([]uint32, time.Duration) {
	dst := make([]int, 0, MaxAnswers)
	var ttls []uint32
	now := start
	for range n {
		var ttl uint32
		dst, ttl, _ = p.Choose(dst, IPv4, key, at(now))
		ttls = append(ttls, ttl)
		now += time.Duration(ttl)*time.Second + wait()
	}
	return ttls, now
}

func TestAdaptiveTTL(t *testing.T) {
	for _, c := range []struct {
		name   string
		ttl    time.Duration
		ttlMin time.Duration
		policy Kind
		gap    time.Duration
		lo, hi uint32 // the TTL after 30 questions
	}{
		// Back 50 ms after each expiry: 21 clients an answer at 1 s.
		{"busy", time.Second, 0, LeastLoaded, 50 * time.Millisecond, 0, 0},
		{"busy, weighted", time.Second, 0, Weighted, 50 * time.Millisecond, 0, 0},
		{"busy, ttl_min 1s", time.Second, time.Second, LeastLoaded, 50 * time.Millisecond, 1, 1},
		{"busy, round-robin", time.Second, 0, RoundRobin, 50 * time.Millisecond, 1, 1},
		// Back 4 s after each expiry: 1.25 clients an answer.
		{"quiet", time.Second, 0, LeastLoaded, 4 * time.Second, 1, 1},
		// About 1 client a second: an answer of 3 s brings 4 (the limit),
		// one of 5 s 6; the noise of the waits moves it by a second.
		{"ttl 5s", 5 * time.Second, 0, LeastLoaded, time.Second, 2, 4},
		{"ttl 5s, ttl_min 3s", 5 * time.Second, 3 * time.Second, LeastLoaded, 250 * time.Millisecond, 3, 3},
	} {
		cfg := testConfig()
		cfg.TTL, cfg.TTLMin, cfg.Policy, cfg.TTLJitter = c.ttl, c.ttlMin, c.policy, 0
		if err := cfg.Validate(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		p := NewPool(cfg, targets(10), nil, nil, t0)
		ttls, _ := askEvery(p, 42, 0, c.gap, 30)
		if ttls[0] != uint32(c.ttl/time.Second) {
			t.Errorf("%s: first answer (an unknown asker) TTL %d", c.name, ttls[0])
		}
		if got := ttls[len(ttls)-1]; got < c.lo || got > c.hi {
			t.Errorf("%s: TTL %d after 30 questions, want %d to %d (%v)", c.name, got, c.lo, c.hi, ttls)
		}
	}
}

// TestAdaptiveTTLKeepsStickiness: a busy asker given TTL 0 still gets the
// same nodes for the AAAA question a millisecond after the A one, and a
// fresh choice for the next client's question.
func TestAdaptiveTTLKeepsStickiness(t *testing.T) {
	cfg := testConfig()
	cfg.TTLJitter = 0
	p := NewPool(cfg, targets(10), nil, nil, t0)
	ttls, now := askEvery(p, 7, 0, 50*time.Millisecond, 30)
	if ttls[len(ttls)-1] != 0 {
		t.Fatalf("busy asker TTLs %v", ttls)
	}
	dst := make([]int, 0, MaxAnswers)
	a, _, _ := p.Choose(dst, IPv4, 7, at(now))
	a = append([]int(nil), a...)
	b, ttl, _ := p.Choose(dst, IPv4, 7, at(now+time.Millisecond))
	if ttl != 0 || b[0] != a[0] {
		t.Errorf("repeat 1 ms later: %v TTL %d, first answer %v", b, ttl, a)
	}
	fresh := 0
	for i := range 20 {
		now += 50 * time.Millisecond
		c, _, _ := p.Choose(dst, IPv4, 7, at(now))
		if i > 0 && c[0] != a[0] {
			fresh++
		}
		a = append(a[:0], c...)
	}
	// Without the shorter window, 500 ms of stickiness would repeat the
	// first record for 10 questions in a row.
	if fresh < 10 {
		t.Errorf("questions 50 ms apart of a TTL 0 asker: the first record changed %d times in 19", fresh)
	}
}

// TestFailureWave: for a while after a target turns critical or leaves
// the pool, an asker whose answers bring a few clients (too few to be
// shortened in a steady state) gets the shortest TTL, so the dead
// target's reconnecting clients each get a choice.
func TestFailureWave(t *testing.T) {
	for _, c := range []struct {
		name string
		kill func([]health.Target) []health.Target
	}{
		{"critical", func(ts []health.Target) []health.Target { ts[3].Health = health.HealthCritical; return ts }},
		{"gone", func(ts []health.Target) []health.Target { return append(ts[:3], ts[4:]...) }},
	} {
		cfg := testConfig()
		cfg.TTLJitter = 0
		p := NewPool(cfg, targets(10), nil, nil, t0)
		// Back 700 ms after each expiry: 2.4 clients an answer, under
		// the limit of 4 and over the wave's limit of 2.
		ttls, end := askFixed(p, 9, 0, 700*time.Millisecond, 20)
		if ttls[len(ttls)-1] != 1 {
			t.Fatalf("%s: steady TTLs %v", c.name, ttls)
		}
		p = NewPool(cfg, c.kill(targets(10)), nil, p, t0.Add(end))
		ttls, end = askFixed(p, 9, end, 700*time.Millisecond, 5)
		if ttls[len(ttls)-1] != 0 {
			t.Errorf("%s: TTLs in the wave %v, want 0 at last", c.name, ttls)
		}
		// Slower now, 1.5 clients an answer: over half the wave's limit,
		// so a shortened asker would stay shortened in a wave, and under
		// the limit of 4 after it.
		end += time.Duration(waveLength)
		p = NewPool(cfg, c.kill(targets(10)), nil, p, t0.Add(end))
		ttls, _ = askFixed(p, 9, end, 2*time.Second, 5)
		if ttls[len(ttls)-1] != 1 {
			t.Errorf("%s: TTLs after the wave %v, want 1", c.name, ttls)
		}
	}
}

// TestShortenedAskerKeepsItsSlot: an asker given TTL 0 is a busy one, and
// its slot in the asker table is not handed to another key that happens to
// share it (100,000 resolvers share 4,096 slots): it would lose its TTL 0
// for one full-TTL answer, the one a failure wave may meet.
func TestShortenedAskerKeepsItsSlot(t *testing.T) {
	cfg := testConfig()
	cfg.TTLJitter = 0
	p := NewPool(cfg, targets(10), nil, nil, t0)
	const busy = 7
	other := uint64(busy + 1)
	for mix(other)%askerSlots != mix(busy)%askerSlots {
		other++
	}
	ttls, now := askEvery(p, busy, 0, 50*time.Millisecond, 30)
	if ttls[len(ttls)-1] != 0 {
		t.Fatalf("busy asker TTLs %v", ttls)
	}
	dst := make([]int, 0, MaxAnswers)
	p.Choose(dst, IPv4, other, at(now))
	if _, ttl, _ := p.Choose(dst, IPv4, busy, at(now+20*time.Millisecond)); ttl != 0 {
		t.Errorf("busy asker's TTL %d after another key shared its slot", ttl)
	}
}
