// Package policy decides which targets a load-aware DNS answer names. It is
// pure Go: it reads health.Target values, keeps its own ledger of the answers
// it handed out, and returns indices; it does no I/O, knows no DNS types and
// keeps no global state. A Pool is built off the query path whenever a new
// health snapshot arrives; Pool.Choose is lock-free and allocation-free.
//
// How the default policy (LeastLoaded) avoids herding clients onto the
// emptiest target, and how that was measured, is in RESULTS.md.
package policy

import (
	"errors"
	"fmt"
	"time"
)

// Mode says what a pool's answers name.
type Mode uint8

const (
	// Nodes answers with the targets themselves.
	Nodes Mode = iota
	// Shards picks one shard (targets grouped by a service meta key) and
	// answers with that shard's load balancers.
	Shards
)

var modeNames = []string{"nodes", "shards"}

// Kind is a selection policy.
type Kind uint8

const (
	// LeastLoaded is the default and herd-proof policy: predicted load
	// (last report plus the clients the answers handed out since are expected
	// to bring), a random choice among the nearly least loaded, slow start.
	LeastLoaded Kind = iota
	// Weighted samples targets with probability proportional to their
	// predicted headroom (capacity minus predicted load).
	Weighted
	// RoundRobin rotates through the eligible targets regardless of load,
	// as Consul DNS does. It is the baseline that ignores load.
	RoundRobin
	// NaiveLeastLoaded answers with the k least loaded targets by last report:
	// no prediction, no randomness, no slow start. It herds, and exists only
	// so the simulator can show by how much; UnmarshalText does not accept it.
	NaiveLeastLoaded
)

var kindNames = []string{"least-loaded", "weighted", "round-robin", "naive-least-loaded"}

// OnEmpty says what to answer when no target is eligible.
type OnEmpty uint8

const (
	// EmptyFailOpen answers with the least bad targets that are not draining
	// (see Pool.Choose); if there are none, the outcome is OutcomeNoData.
	EmptyFailOpen OnEmpty = iota
	// EmptyNoData answers with no records.
	EmptyNoData
	// EmptyServFail refuses to answer.
	EmptyServFail
)

var onEmptyNames = []string{"fail-open", "nodata", "servfail"}

// String returns the configuration name of the mode.
func (m Mode) String() string { return name(modeNames, int(m)) }

// String returns the configuration name of the policy.
func (k Kind) String() string { return name(kindNames, int(k)) }

// String returns the configuration name of the on_empty choice.
func (o OnEmpty) String() string { return name(onEmptyNames, int(o)) }

// UnmarshalText parses "nodes" or "shards", so a Mode decodes from YAML.
func (m *Mode) UnmarshalText(b []byte) error {
	return parse(modeNames, len(modeNames), "mode", b, (*uint8)(m))
}

// UnmarshalText parses "least-loaded", "weighted" or "round-robin".
func (k *Kind) UnmarshalText(b []byte) error {
	return parse(kindNames, int(NaiveLeastLoaded), "policy", b, (*uint8)(k))
}

// UnmarshalText parses "fail-open", "nodata" or "servfail".
func (o *OnEmpty) UnmarshalText(b []byte) error {
	return parse(onEmptyNames, len(onEmptyNames), "on_empty", b, (*uint8)(o))
}

func name(names []string, i int) string {
	if i < len(names) {
		return names[i]
	}
	return fmt.Sprintf("invalid(%d)", i)
}

func parse(names []string, n int, what string, b []byte, dst *uint8) error {
	for i, s := range names[:n] {
		if s == string(b) {
			*dst = uint8(i)
			return nil
		}
	}
	return fmt.Errorf("%s %q: want one of %v", what, b, names[:n])
}

// MaxAnswers is the most records one answer may name. Beyond a handful,
// more records only spread a resolver's clients over targets the policy did
// not rank, and answers grow past what fits a UDP reply.
const MaxAnswers = 8

// Config is one pool's policy. Start from DefaultConfig and override fields;
// a zero field means zero (e.g. SlowStart 0 turns slow start off), not
// "default". Validate names a field by its configuration key, the field
// name in snake_case (slow_start_floor).
type Config struct {
	// Mode is nodes or shards.
	Mode Mode
	// Answers is the number of records per answer (A and AAAA alike), 1 to
	// MaxAnswers. In shards mode it bounds the LBs named per answer.
	Answers int
	// TTL is the answers' time to live, a whole number of seconds; 0: uncached.
	TTL time.Duration
	// TTLMin is the shortest TTL an answer may get (whole seconds, 0 to
	// TTL). Under the load-aware policies, an asker whose answers would
	// each bring many clients (a busy resolver, or any resolver during a
	// failure wave) gets a TTL short enough that they bring few, down to
	// TTLMin: at 0 each of its clients gets a choice of its own. Quiet
	// askers keep TTL. TTLMin equal to TTL turns this off.
	TTLMin time.Duration
	// HerdClients is how many clients one answer may bring before its TTL
	// is shortened (see TTLMin); at least 2. A cached answer sends all its
	// clients to one first record whatever happens meanwhile: the ledger
	// counts them, but cannot take them back when the asker's clients
	// suddenly multiply (a failed target's clients reconnecting through it).
	HerdClients float64
	// Policy selects the targets (nodes mode) or the shard (shards mode).
	Policy Kind
	// Capacity is a target's capacity in connections when its load report
	// and service meta give none; 0 means unknown. Utilisation (predicted
	// connections over capacity) is what the policies balance; targets of
	// unknown capacity are given the mean known capacity, or all count as
	// equal if none is known.
	Capacity int64
	// ShardMeta is the service meta key naming a target's shard (shards
	// mode; LB instances carry the same key). Required in shards mode.
	// Targets and LBs without it belong to no shard and are left out.
	ShardMeta string
	// OnEmpty is what to answer when no target is eligible.
	OnEmpty OnEmpty
	// SlowStart is how long a new or recovered target's effective capacity
	// ramps up from SlowStartFloor to its full capacity; 0 turns it off.
	SlowStart time.Duration
	// SlowStartFloor is the effective capacity, as a fraction of the full
	// one, a target starts its slow start with (0 to 1).
	SlowStartFloor float64
	// TTLJitter is the largest relative change made to each answer's TTL
	// (0 to 0.5), so that cached answers do not all expire together.
	TTLJitter float64
	// Spread is how near the least loaded a target must be to be chosen
	// first, as a fraction of the pool's mean utilisation (0 to 0.5). A
	// little spread keeps two farmdns instances, which do not see each
	// other's answers until the next report, from choosing the same target.
	Spread float64
	// Candidates is how many targets one choice looks at: pools up to this
	// size are looked at whole, larger ones sampled at random, which keeps a
	// choice among 10,000 targets as cheap as among 32.
	Candidates int
	// StickyWindow is how long a key (client address or subnet, and name)
	// keeps getting the same nodes, so that a client's A and AAAA answers
	// name the same nodes; 0 turns it off. It must be under the TTL: a
	// resolver that asks again after its cache expired gets a fresh choice.
	StickyWindow time.Duration
	// LearnWindow is the time constant of the learned clients-per-answer
	// scale (see Pool.ClientsPerAnswer).
	LearnWindow time.Duration
	// Seed is mixed into every random choice. Give each farmdns instance its
	// own, so that instances answering the same resolvers do not agree.
	Seed uint64
}

// DefaultConfig returns the defaults, chosen with cmd/farmdns-sim (see RESULTS.md).
func DefaultConfig() Config {
	return Config{
		Mode:           Nodes,
		Answers:        3,
		TTL:            time.Second,
		TTLMin:         0,
		HerdClients:    4,
		Policy:         LeastLoaded,
		OnEmpty:        EmptyFailOpen,
		SlowStart:      45 * time.Second,
		SlowStartFloor: 0.05,
		TTLJitter:      0.1,
		Spread:         0.005,
		Candidates:     32,
		StickyWindow:   500 * time.Millisecond,
		LearnWindow:    10 * time.Second,
	}
}

// Validate reports the first invalid field, named by its configuration key.
func (c *Config) Validate() error {
	switch {
	case c.Mode > Shards:
		return fmt.Errorf("mode: invalid value %d", c.Mode)
	case c.Answers < 1 || c.Answers > MaxAnswers:
		return fmt.Errorf("answers: %d is not between 1 and %d", c.Answers, MaxAnswers)
	case c.TTL < 0 || c.TTL%time.Second != 0 || c.TTL > 24*time.Hour:
		return fmt.Errorf("ttl: %s is not a whole number of seconds between 0s and 24h", c.TTL)
	case c.TTLMin < 0 || c.TTLMin%time.Second != 0 || c.TTLMin > c.TTL:
		return fmt.Errorf("ttl_min: %s is not a whole number of seconds between 0s and the TTL (%s)", c.TTLMin, c.TTL)
	case !(c.HerdClients >= 2):
		return fmt.Errorf("herd_clients: %v is under 2", c.HerdClients)
	case c.Policy > NaiveLeastLoaded:
		return fmt.Errorf("policy: invalid value %d", c.Policy)
	case c.Capacity < 0:
		return fmt.Errorf("capacity: %d is negative", c.Capacity)
	case c.Mode == Shards && c.ShardMeta == "":
		return errors.New("shard_meta: required in shards mode")
	case c.Mode == Nodes && c.ShardMeta != "":
		return errors.New("shard_meta: only allowed in shards mode")
	case c.OnEmpty > EmptyServFail:
		return fmt.Errorf("on_empty: invalid value %d", c.OnEmpty)
	case c.SlowStart < 0:
		return fmt.Errorf("slow_start: %s is negative", c.SlowStart)
	case !(c.SlowStartFloor >= 0 && c.SlowStartFloor <= 1):
		return fmt.Errorf("slow_start_floor: %v is not between 0 and 1", c.SlowStartFloor)
	case !(c.TTLJitter >= 0 && c.TTLJitter <= 0.5):
		return fmt.Errorf("ttl_jitter: %v is not between 0 and 0.5", c.TTLJitter)
	case !(c.Spread >= 0 && c.Spread <= 0.5):
		return fmt.Errorf("spread: %v is not between 0 and 0.5", c.Spread)
	case c.Candidates < 2 || c.Candidates > 1024:
		return fmt.Errorf("candidates: %d is not between 2 and 1024", c.Candidates)
	case c.StickyWindow < 0 || c.StickyWindow >= max(c.TTL, time.Second):
		return fmt.Errorf("sticky_window: %s is not between 0 and the TTL (%s)", c.StickyWindow, c.TTL)
	case c.LearnWindow < time.Second:
		return fmt.Errorf("learn_window: %s is under 1s", c.LearnWindow)
	}
	return nil
}
