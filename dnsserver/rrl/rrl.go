// Package rrl is response rate limiting for an authoritative DNS server: it
// decides, for each UDP response, whether it is sent, dropped or "slipped"
// (sent truncated so that a real client retries over TCP), so that forged
// queries cannot make the server flood a victim with answers.
//
// Responses are counted in token buckets keyed by (client prefix, response
// class), as BIND's, Knot's and NSD's RRL do: a class is a positive answer
// for one name, a negative answer (NXDOMAIN or NODATA) for one zone, a
// referral for one delegation, or an error. Keying negative answers by zone,
// not by name, makes a flood of random names one class.
//
// The buckets live in a fixed-size table, so memory stays bounded however
// many prefixes send queries; a bucket is one 64-bit word updated with
// compare-and-swap, so checking a response takes no lock.
package rrl

import (
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
)

// Kind is the kind of a response, the first part of its class.
type Kind uint8

// The kinds of responses. The name that goes with each is given in brackets.
const (
	Answer   Kind = iota + 1 // a positive answer [the query name]
	NXDomain                 // name does not exist [the zone]
	NoData                   // name exists, type does not [the zone]
	Referral                 // a delegation [the delegated name]
	Error                    // SERVFAIL, REFUSED, FORMERR, ... [none]
)

var kindNames = [...]string{"", "answer", "nxdomain", "nodata", "referral", "error"}

// String names the kind, for logs.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Action is what to do with a response.
type Action uint8

// The actions.
const (
	Pass Action = iota // send it
	Drop               // send nothing
	Slip               // send it truncated: TC set, no records
)

// Config is a limiter's configuration.
type Config struct {
	// ResponsesPerSecond is the rate allowed per client prefix and class; a
	// prefix may also send one second's worth at once.
	ResponsesPerSecond int
	// Slip: every Slip-th limited response is slipped, the others dropped;
	// 0 drops them all.
	Slip int
	// IPv4Prefix and IPv6Prefix are the prefix lengths that group clients.
	IPv4Prefix, IPv6Prefix int
	// Window is how long debt is remembered: a prefix over its rate owes at
	// most Window's worth of responses, which it pays off by staying under.
	Window time.Duration
	// Exempt clients are never limited.
	Exempt []netip.Prefix
	// LogOnly limiters count and log what they would limit, but pass all.
	LogOnly bool
	// TableSize is the number of buckets, rounded up to a power of two and
	// at least 64; 0: DefaultTableSize.
	TableSize int
	// Log receives a line when a prefix starts being limited; nil: none.
	Log *slog.Logger
	// Now is the clock; nil: time.Now. Tests set it.
	Now func() time.Time
}

// DefaultTableSize is the default number of buckets: 2 MiB of table, room
// for a quarter of a million (prefix, class) pairs active at once.
const DefaultTableSize = 1 << 18

// MaxResponsesPerSecond bounds ResponsesPerSecond: the table keeps time in
// microseconds, one response's cost at the most.
const MaxResponsesPerSecond = 1_000_000

// Validate reports the first setting out of range.
func (c Config) Validate() error {
	switch {
	case c.ResponsesPerSecond < 1 || c.ResponsesPerSecond > MaxResponsesPerSecond:
		return fmt.Errorf("responses_per_second: %d is not between 1 and %d", c.ResponsesPerSecond, MaxResponsesPerSecond)
	case c.Slip < 0 || c.Slip > 10:
		return fmt.Errorf("slip: %d is not between 0 and 10", c.Slip)
	case c.IPv4Prefix < 8 || c.IPv4Prefix > 32:
		return fmt.Errorf("ipv4_prefix: %d is not between 8 and 32", c.IPv4Prefix)
	case c.IPv6Prefix < 16 || c.IPv6Prefix > 128:
		return fmt.Errorf("ipv6_prefix: %d is not between 16 and 128", c.IPv6Prefix)
	case c.Window < time.Second || c.Window > time.Hour:
		return fmt.Errorf("window: %s is not between 1s and 1h", c.Window)
	case c.TableSize < 0 || c.TableSize > 1<<30:
		return fmt.Errorf("table size: %d is not between 0 and 2^30", c.TableSize)
	}
	return nil
}

// A bucket word holds a tag (the hash's top bits, telling keys sharing a
// group apart), a flag saying the key's limiting was logged, and the key's
// theoretical arrival time (GCRA): the time, in microseconds since the
// limiter's epoch, at which its bucket would be full again. Every response
// moves it one interval (1/rate) later; a response is passed while that
// stays within one second of now, the burst. Limited responses move it too,
// up to Window past the burst: that is the debt. A word whose time is past
// is as good as empty, so no sweep is ever needed. 48 bits of microseconds
// last 8.9 years.
const (
	timeBits = 48
	timeMask = 1<<timeBits - 1
	loggedB  = 1 << timeBits
	tagShift = timeBits + 1
)

// groupSize buckets, one cache line, are searched for a key: a key evicts
// another only when all of them are in use.
const groupSize = 8

// Limiter decides which responses are limited. It is safe for concurrent
// use; Check takes no lock and allocates nothing.
type Limiter struct {
	cfg      Config
	table    []atomic.Uint64
	mask     uint64
	seed     maphash.Seed
	epoch    time.Time
	interval int64 // µs per response
	burst    int64 // µs: one second's responses
	maxDebt  int64 // µs: burst plus window
	limited  atomic.Uint64
	logTAT   atomic.Int64   // the log lines' own bucket
	logged   []atomic.Int64 // by prefix hash: when it was last logged, µs
}

// loggedSize is the number of prefixes whose last log line is remembered; a
// collision only costs a line.
const loggedSize = 1024

// New returns a limiter for c.
func New(c Config) (*Limiter, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("rrl: %w", err)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	size := DefaultTableSize
	if c.TableSize > 0 {
		size = 64
		for size < c.TableSize {
			size <<= 1
		}
	}
	l := &Limiter{
		cfg:      c,
		table:    make([]atomic.Uint64, size),
		logged:   make([]atomic.Int64, loggedSize),
		mask:     uint64(size - 1),
		seed:     maphash.MakeSeed(), // unknown to clients: they cannot aim at one bucket
		epoch:    c.Now(),
		interval: max(1, int64(time.Second/time.Microsecond)/int64(c.ResponsesPerSecond)),
		burst:    int64(time.Second / time.Microsecond),
	}
	l.maxDebt = l.burst + c.Window.Microseconds()
	return l, nil
}

// LogOnly reports whether the limiter only counts and logs.
func (l *Limiter) LogOnly() bool { return l.cfg.LogOnly }

// Check counts one response of kind to client and returns what to do with
// it. name is the class's name (see Kind) in lower-case wire form; nil for
// errors. A LogOnly limiter returns what it would do: the caller sends the
// response anyway.
func (l *Limiter) Check(client netip.Addr, kind Kind, name []byte) Action {
	client = client.Unmap()
	for _, p := range l.cfg.Exempt {
		if p.Contains(client) {
			return Pass
		}
	}
	// The key: kind, prefix, name. Hashing it whole from the stack keeps
	// this free of allocations.
	var key [1 + 16 + 255]byte
	key[0] = byte(kind)
	bits := l.cfg.IPv6Prefix
	if client.Is4() {
		bits = l.cfg.IPv4Prefix
		key[0] |= 0x80 // a v4 prefix never equals a v6 one
	}
	pfx, _ := client.Prefix(bits)
	a := pfx.Addr().As16()
	copy(key[1:], a[:])
	n := 17 + copy(key[17:], name)
	h := maphash.Bytes(l.seed, key[:n])

	now := l.now()
	pass, first := l.update(h, now)
	if pass {
		return Pass
	}
	act := Drop
	if l.cfg.Slip > 0 && l.limited.Add(1)%uint64(l.cfg.Slip) == 0 {
		act = Slip
	}
	if first {
		l.logLimited(pfx, maphash.Bytes(l.seed, key[1:17]), kind, name, now)
	}
	return act
}

func (l *Limiter) now() int64 { return l.cfg.Now().Sub(l.epoch).Microseconds() }

// update debits one response from the bucket of hash h. It reports whether
// the response is within the rate, and if not whether it is the first
// limited one of this key since its bucket was last full.
func (l *Limiter) update(h uint64, now int64) (pass, first bool) {
	tag := h >> tagShift
	group := l.table[h&l.mask&^(groupSize-1):][:groupSize]
	for {
		slot, old := -1, uint64(0)
		oldest := int64(math.MaxInt64)
		for i := range group {
			w := group[i].Load()
			if w>>tagShift == tag {
				slot, old = i, w
				break
			}
			if t := int64(w & timeMask); t < oldest {
				slot, old, oldest = i, w, t
			}
		}
		tat, logged := now, false
		if old>>tagShift == tag {
			if t := int64(old & timeMask); t > now {
				// Still within the rate period: its state carries over.
				tat, logged = t, old&loggedB != 0
			}
		} // else: the least used word of the group is taken over
		tat += l.interval
		pass = tat-now <= l.burst
		tat = min(tat, now+l.maxDebt)
		w := tag<<tagShift | uint64(tat)&timeMask
		first = !pass && !logged
		if !pass || logged {
			// Logged stays set until the bucket is full again: a client
			// hovering around its rate is logged once, not at every swing.
			w |= loggedB
		}
		if group[slot].CompareAndSwap(old, w) {
			return pass, first
		}
	}
}

// logLimited logs that a prefix started being limited for a class (it logs
// again only once that class's bucket is full again). A prefix logs at most
// once a Window, whatever its classes; all together, at most ten lines a
// second, however many prefixes a flood comes from.
func (l *Limiter) logLimited(pfx netip.Prefix, pfxHash uint64, kind Kind, name []byte, now int64) {
	last := &l.logged[pfxHash%loggedSize]
	if t := last.Load(); t != 0 && now-t < l.maxDebt-l.burst || !last.CompareAndSwap(t, now) {
		return
	}
	const perLine = 100_000 // µs
	for {
		old := l.logTAT.Load()
		tat := max(old, now) + perLine
		if tat-now > 10*perLine {
			return
		}
		if l.logTAT.CompareAndSwap(old, tat) {
			break
		}
	}
	verb := "limiting"
	if l.cfg.LogOnly {
		verb = "would limit (log_only)"
	}
	l.cfg.Log.Warn("rrl: "+verb+" responses to a client prefix",
		"prefix", pfx.String(), "class", kind.String(), "name", wireName(name),
		"responses_per_second", l.cfg.ResponsesPerSecond)
}

// wireName presents a wire-form name for a log line.
func wireName(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	var s strings.Builder
	for len(b) > 0 && b[0] != 0 && int(b[0]) < len(b) {
		s.Write(b[1 : 1+b[0]])
		s.WriteByte('.')
		b = b[1+b[0]:]
	}
	if s.Len() == 0 {
		return "."
	}
	return s.String()
}

// Fill returns the share of the table's buckets holding state: those of keys
// that sent a response less than their rate period ago, or are in debt.
// It reads the whole table: for metrics scrapes, not the query path.
func (l *Limiter) Fill() float64 {
	now := l.now()
	used := 0
	for i := range l.table {
		if int64(l.table[i].Load()&timeMask) > now {
			used++
		}
	}
	return float64(used) / float64(len(l.table))
}
