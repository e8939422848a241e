package rrl

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a fake clock the tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestLimiter(t testing.TB, c Config) (*Limiter, *clock) {
	t.Helper()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	c.Now = clk.now
	if c.ResponsesPerSecond == 0 {
		c.ResponsesPerSecond = 50
	}
	if c.IPv4Prefix == 0 {
		c.IPv4Prefix, c.IPv6Prefix = 24, 56
	}
	if c.Window == 0 {
		c.Window = 15 * time.Second
	}
	l, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return l, clk
}

var (
	victim = netip.MustParseAddr("192.0.2.1")
	name   = []byte("\x03www\x07example\x00")
)

// flood sends n responses of one class to client, spaced by every, and
// counts the actions.
func flood(l *Limiter, clk *clock, client netip.Addr, kind Kind, name []byte, n int, every time.Duration) (counts [3]int) {
	for range n {
		counts[l.Check(client, kind, name)]++
		clk.advance(every)
	}
	return counts
}

func TestLimiterRateAndSlip(t *testing.T) {
	l, clk := newTestLimiter(t, Config{Slip: 2})
	// 2,000 a second for 5 s.
	c := flood(l, clk, victim, Answer, name, 10_000, 500*time.Microsecond)
	if c[Pass] < 50 || c[Pass] > 2*50*5 {
		t.Errorf("passed %d of 10000 at 2000/s; want between the burst (50) and twice the rate over 5 s (500)", c[Pass])
	}
	limited := 10_000 - c[Pass]
	if c[Slip] < limited/2-1 || c[Slip] > limited/2+1 {
		t.Errorf("slipped %d of %d limited; want every 2nd", c[Slip], limited)
	}
}

func TestLimiterUnderRatePasses(t *testing.T) {
	l, clk := newTestLimiter(t, Config{Slip: 2})
	// 40 a second, under the rate of 50, for a minute.
	if c := flood(l, clk, victim, Answer, name, 2400, 25*time.Millisecond); c[Pass] != 2400 {
		t.Errorf("passed %d of 2400 at 40/s with a rate of 50/s", c[Pass])
	}
}

func TestLimiterDebtLastsWindow(t *testing.T) {
	l, clk := newTestLimiter(t, Config{Slip: 0, Window: 10 * time.Second})
	flood(l, clk, victim, Answer, name, 10_000, 500*time.Microsecond)
	// The flood left a window's worth of debt: a few seconds of silence do
	// not pay it off...
	clk.advance(5 * time.Second)
	if a := l.Check(victim, Answer, name); a != Drop {
		t.Errorf("5 s after the flood, within the 10 s window: %v, want drop", a)
	}
	// ...the window does.
	clk.advance(10 * time.Second)
	if a := l.Check(victim, Answer, name); a != Pass {
		t.Errorf("after the window: %v, want pass", a)
	}
}

func TestLimiterKeys(t *testing.T) {
	other := []byte("\x04mail\x07example\x00")
	for _, tc := range []struct {
		desc       string
		client     netip.Addr
		kind       Kind
		name       []byte
		wantShared bool
	}{
		{"same /24", netip.MustParseAddr("192.0.2.200"), Answer, name, true},
		{"v4-mapped v6 is v4", netip.MustParseAddr("::ffff:192.0.2.7"), Answer, name, true},
		{"another /24", netip.MustParseAddr("192.0.3.1"), Answer, name, false},
		{"another name", victim, Answer, other, false},
		{"another kind", victim, NXDomain, name, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			l, clk := newTestLimiter(t, Config{})
			flood(l, clk, victim, Answer, name, 200, time.Millisecond)
			shared := l.Check(tc.client, tc.kind, tc.name) != Pass
			if shared != tc.wantShared {
				t.Errorf("limited with the flooded class: %v, want %v", shared, tc.wantShared)
			}
		})
	}
	t.Run("ipv6 /56", func(t *testing.T) {
		l, clk := newTestLimiter(t, Config{})
		flood(l, clk, netip.MustParseAddr("2001:db8:0:100::1"), Error, nil, 200, time.Millisecond)
		if l.Check(netip.MustParseAddr("2001:db8:0:1ff::9"), Error, nil) == Pass {
			t.Error("same /56 not limited")
		}
		if l.Check(netip.MustParseAddr("2001:db8:0:200::1"), Error, nil) != Pass {
			t.Error("another /56 limited")
		}
	})
}

func TestLimiterExempt(t *testing.T) {
	l, clk := newTestLimiter(t, Config{Exempt: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/28")}})
	if c := flood(l, clk, victim, Answer, name, 1000, time.Millisecond); c[Pass] != 1000 {
		t.Errorf("exempt client: %d of 1000 passed", c[Pass])
	}
	if c := flood(l, clk, netip.MustParseAddr("192.0.2.100"), Answer, name, 1000, time.Millisecond); c[Pass] == 1000 {
		t.Error("a client outside the exempt prefix was not limited")
	}
}

// A flood from millions of prefixes leaves the table its fixed size and
// does not evict the bucket of a prefix in debt.
func TestLimiterTableBounded(t *testing.T) {
	n := 2_000_000
	if testing.Short() || raceOn {
		n = 20_000
	}
	l, clk := newTestLimiter(t, Config{TableSize: 1 << 14})
	flood(l, clk, victim, Answer, name, 1000, time.Millisecond)
	var a [4]byte
	for i := range n {
		binary.BigEndian.PutUint32(a[:], uint32(i)<<8|1) // each in its own /24
		l.Check(netip.AddrFrom4(a), Answer, name)
		if i%100 == 0 {
			clk.advance(time.Millisecond) // 100,000 prefixes a second
			if l.Check(victim, Answer, name) == Pass {
				t.Fatalf("after %d other prefixes, the flooded prefix passed: its debt was evicted", i)
			}
		}
	}
	if len(l.table) != 1<<14 {
		t.Errorf("table has %d buckets, want %d", len(l.table), 1<<14)
	}
	if f := l.Fill(); f <= 0 || f > 1 {
		t.Errorf("fill %v", f)
	}
}

func TestLimiterLogsOncePerPrefix(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	l, clk := newTestLimiter(t, Config{Log: log, Window: 2 * time.Second})
	// Two classes flooded from one prefix: one line.
	for range 10_000 {
		l.Check(victim, NXDomain, []byte("\x07example\x00"))
		l.Check(victim, Answer, name)
		clk.advance(500 * time.Microsecond)
	}
	if got := strings.Count(buf.String(), "\n"); got != 1 {
		t.Fatalf("%d log lines for one flooded prefix, want 1:\n%s", got, &buf)
	}
	// Another prefix is news.
	flood(l, clk, netip.MustParseAddr("198.51.100.1"), Answer, name, 1000, 500*time.Microsecond)
	if got := strings.Count(buf.String(), "\n"); got != 2 {
		t.Fatalf("%d log lines for two flooded prefixes, want 2:\n%s", got, &buf)
	}
	if !strings.Contains(buf.String(), "prefix=192.0.2.0/24") || !strings.Contains(buf.String(), "name=example.") {
		t.Errorf("log line lacks the prefix or the zone: %s", &buf)
	}
	// Once the debt is paid, a new flood is news again.
	clk.advance(4 * time.Second)
	flood(l, clk, victim, NXDomain, []byte("\x07example\x00"), 1000, 500*time.Microsecond)
	if got := strings.Count(buf.String(), "\n"); got != 3 {
		t.Errorf("%d log lines after a second flood, want 3:\n%s", got, &buf)
	}
}

func TestLimiterConcurrent(t *testing.T) {
	l, err := New(Config{ResponsesPerSecond: 1000, Slip: 2, IPv4Prefix: 24, IPv6Prefix: 56, Window: time.Second, TableSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 20_000 {
				l.Check(netip.AddrFrom4([4]byte{10, byte(g), byte(i % 50), 1}), Answer, name)
			}
		})
	}
	wg.Wait()
}

func TestConfigValidate(t *testing.T) {
	good := Config{ResponsesPerSecond: 50, Slip: 2, IPv4Prefix: 24, IPv6Prefix: 56, Window: 15 * time.Second}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.ResponsesPerSecond = 0 }, "responses_per_second"},
		{func(c *Config) { c.Slip = -1 }, "slip"},
		{func(c *Config) { c.IPv4Prefix = 33 }, "ipv4_prefix"},
		{func(c *Config) { c.IPv6Prefix = 8 }, "ipv6_prefix"},
		{func(c *Config) { c.Window = time.Millisecond }, "window"},
	} {
		c := good
		tc.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want one naming %s", err, tc.want)
		}
	}
}

func BenchmarkCheck(b *testing.B) {
	l, err := New(Config{ResponsesPerSecond: 1000, Slip: 2, IPv4Prefix: 24, IPv6Prefix: 56, Window: 15 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		l.Check(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), Answer, name)
	}
}
