package policy

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigIsValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateNamesTheKey(t *testing.T) {
	for _, tc := range []struct {
		key string
		mod func(*Config)
	}{
		{"mode", func(c *Config) { c.Mode = 7 }},
		{"answers", func(c *Config) { c.Answers = 0 }},
		{"answers", func(c *Config) { c.Answers = MaxAnswers + 1 }},
		{"ttl", func(c *Config) { c.TTL = -time.Second }},
		{"ttl", func(c *Config) { c.TTL = 1500 * time.Millisecond }},
		{"ttl_min", func(c *Config) { c.TTLMin = -time.Second }},
		{"ttl_min", func(c *Config) { c.TTLMin = 500 * time.Millisecond }},
		{"ttl_min", func(c *Config) { c.TTLMin = 2 * c.TTL }},
		{"herd_clients", func(c *Config) { c.HerdClients = 1 }},
		{"policy", func(c *Config) { c.Policy = 9 }},
		{"capacity", func(c *Config) { c.Capacity = -1 }},
		{"shard_meta", func(c *Config) { c.Mode = Shards }},
		{"shard_meta", func(c *Config) { c.ShardMeta = "shard" }},
		{"on_empty", func(c *Config) { c.OnEmpty = 5 }},
		{"slow_start", func(c *Config) { c.SlowStart = -time.Second }},
		{"slow_start_floor", func(c *Config) { c.SlowStartFloor = 1.5 }},
		{"ttl_jitter", func(c *Config) { c.TTLJitter = 0.6 }},
		{"spread", func(c *Config) { c.Spread = -0.1 }},
		{"candidates", func(c *Config) { c.Candidates = 1 }},
		{"sticky_window", func(c *Config) { c.StickyWindow = c.TTL }},
		{"learn_window", func(c *Config) { c.LearnWindow = 0 }},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.key+":") {
			t.Errorf("%s: got %v", tc.key, err)
		}
	}
}

func TestUnmarshalText(t *testing.T) {
	var m Mode
	var k Kind
	var o OnEmpty
	for _, tc := range []struct {
		err  error
		want string
		got  func() string
	}{
		{m.UnmarshalText([]byte("shards")), "shards", m.String},
		{k.UnmarshalText([]byte("round-robin")), "round-robin", k.String},
		{o.UnmarshalText([]byte("servfail")), "servfail", o.String},
	} {
		if tc.err != nil || tc.got() != tc.want {
			t.Errorf("got %q, %v; want %q", tc.got(), tc.err, tc.want)
		}
	}
	// The naive baseline is for the simulator, not for configurations.
	if err := k.UnmarshalText([]byte("naive-least-loaded")); err == nil {
		t.Error("naive-least-loaded accepted")
	}
	if err := m.UnmarshalText([]byte("Nodes")); err == nil {
		t.Error("Nodes accepted")
	}
}

// TestTTLZero: ttl: 0s is valid, and every answer carries TTL 0, jitter or
// not: nothing caches it, so each client gets a choice of its own.
func TestTTLZero(t *testing.T) {
	c := testConfig()
	c.TTL, c.TTLJitter = 0, 0.5
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	p := NewPool(c, targets(3), nil, nil, t0)
	for i := range 20 {
		if _, ttl, out := p.Choose(make([]int, 0, MaxAnswers), IPv4, uint64(i), at(time.Duration(i)*time.Second)); ttl != 0 || out != OutcomeAnswer {
			t.Fatalf("answer %d: TTL %d, %v", i, ttl, out)
		}
	}
}
