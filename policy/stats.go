package policy

import "time"

// TargetStats is what the status page and metrics show of one target or LB.
type TargetStats struct {
	// Node and ServiceID identify the instance.
	Node, ServiceID string
	// LB is set for a shard's load balancer (shards mode), clear for a target.
	LB bool
	// Shard is the instance's shard (shards mode), "" if none.
	Shard string
	// Eligible says whether it may be answered now.
	Eligible bool
	// Draining says whether it is in Consul maintenance mode.
	Draining bool
	// Answers counts the answers that named it, in this farmdns process
	// (never for nodes in shards mode: answers name their LBs).
	Answers uint64
	// LastAnswered is when an answer last named it; zero if never.
	LastAnswered time.Time
	// ExposureEnds is LastAnswered plus the longest TTL an answer carries:
	// after it, resolvers that honour TTLs no longer hand it out, and a
	// draining target is safe to stop as far as this instance's answers go.
	// Resolvers that stretch TTLs (many clamp to at least 30 s) and clients
	// that cache addresses themselves extend it; allow a margin.
	ExposureEnds time.Time
	// Predicted is the connections it is expected to hold: the latest
	// report plus the clients of the answers counted since.
	Predicted float64
	// Capacity is the capacity the policy uses now, ramped during slow start.
	Capacity float64
	// SlowStartEnds is when its slow start ends; zero if it is not in one.
	SlowStartEnds time.Time
}

// Stats returns the state of every target and LB. It reads the ledger
// without stopping Choose, so counts may be a few answers apart; it
// allocates, and is meant for the status page and metrics scrapes.
func (p *Pool) Stats(now time.Time) []TargetStats {
	n := now.UnixNano()
	out := make([]TargetStats, 0, len(p.ents)+len(p.nodeEnts))
	add := func(t *TargetStats, e *entry) {
		last := e.st.last.Load()
		t.Answers = e.st.count.Load()
		if last != 0 {
			t.LastAnswered = time.Unix(0, last)
		}
		t.ExposureEnds = p.exposureEnds(last)
		t.Capacity = p.capacity(e, n)
		if e.ssEnd > n {
			t.SlowStartEnds = time.Unix(0, e.ssEnd)
		}
		t.Eligible = e.eligible
		if e.shard >= 0 {
			t.Shard = p.shards[e.shard].name
		}
	}
	if p.cfg.Mode == Nodes {
		for i := range p.ents {
			r, e := &p.records[i], &p.ents[i]
			t := TargetStats{Node: r.Node, ServiceID: r.ServiceID, Draining: r.Draining, Predicted: p.predicted(e)}
			add(&t, e)
			out = append(out, t)
		}
		return out
	}
	for i := range p.nodeEnts {
		r, e := &p.nodes[i], &p.nodeEnts[i]
		t := TargetStats{Node: r.Node, ServiceID: r.ServiceID, Draining: r.Draining, Predicted: e.conn}
		add(&t, e)
		t.Answers, t.LastAnswered, t.ExposureEnds = 0, time.Time{}, time.Time{}
		if e.shard >= 0 && e.eligible {
			s := &p.shards[e.shard]
			t.Predicted += p.c1 * e.cap / s.capElig * (float64(s.st.answers.Load()) - e.base1) / ledgerUnit
		}
		out = append(out, t)
	}
	for i := range p.ents {
		r, e := &p.records[i], &p.ents[i]
		t := TargetStats{Node: r.Node, ServiceID: r.ServiceID, LB: true, Draining: r.Draining}
		add(&t, e)
		out = append(out, t)
	}
	return out
}
