package main

import (
	"math"
	"time"
)

// threshold is report.min_change: either a percentage of the last written
// count or an absolute number of connections.
type threshold struct {
	relative bool
	percent  float64 // when relative
	absolute int64   // when not
}

// moved reports whether now differs enough from last to be worth a write.
// A relative threshold never asks for less than one connection, so that 0 -> 1
// counts as a change but a steady count never does.
func (t threshold) moved(last, now int64) bool {
	d := now - last
	if d < 0 {
		d = -d
	}
	if d == 0 {
		return false
	}
	if !t.relative {
		return d >= t.absolute
	}
	need := max(1, int64(math.Ceil(t.percent/100*float64(last))))
	return d >= need
}

// damping is the write policy: write when the count moved by minChange since
// the last write, or when heartbeat has passed since it, whichever comes
// first; but never sooner than minInterval after the last write.
type damping struct {
	minChange   threshold
	heartbeat   time.Duration
	minInterval time.Duration
}

// Reasons for a write, used as the value of the writes_total "reason" label.
const (
	reasonFirst     = "first"
	reasonChange    = "change"
	reasonHeartbeat = "heartbeat"
)

// damper applies a damping policy to a stream of counts. It is pure state:
// the caller supplies the clock and tells it which writes succeeded.
type damper struct {
	policy    damping
	written   bool
	lastCount int64
	lastWrite time.Time
}

// due reports whether count, seen at now, should be written, and why. A
// failed write is simply not recorded with wrote, so the next call asks again.
func (d *damper) due(now time.Time, count int64) (reason string, ok bool) {
	if !d.written {
		return reasonFirst, true
	}
	since := now.Sub(d.lastWrite)
	if since < d.policy.minInterval {
		return "", false
	}
	if since >= d.policy.heartbeat {
		return reasonHeartbeat, true
	}
	if d.policy.minChange.moved(d.lastCount, count) {
		return reasonChange, true
	}
	return "", false
}

// next returns the earliest time at which due can turn true without a new
// count: the heartbeat, or the end of the minimum interval when count has
// already moved enough. The zero time means "now".
func (d *damper) next(count int64) time.Time {
	if !d.written {
		return time.Time{}
	}
	if d.policy.minChange.moved(d.lastCount, count) {
		return d.lastWrite.Add(d.policy.minInterval)
	}
	return d.lastWrite.Add(d.policy.heartbeat)
}

// wrote records a successful write of count made at now.
func (d *damper) wrote(now time.Time, count int64) {
	d.written, d.lastCount, d.lastWrite = true, count, now
}
