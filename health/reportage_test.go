package health

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestFutureReportGoesStale: a report dated in the future (its reporter's
// clock ahead, or a bogus stamp) is judged by when farmdns saw it change,
// so it turns stale max_report_age after it stops changing, like any other.
func TestFutureReportGoesStale(t *testing.T) {
	b, _ := newTestBuilder(t, ServiceConfig{Name: "web"})
	b.instances["web"] = instancesFromEntries([]*api.ServiceEntry{entry("n1", "10.0.0.1", "a", "", 80, nil)}, "farmdns/load", "web")
	state := func(s *Snapshot) Load { return s.Pool("web").Targets()[0].Load }
	far := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

	b.setKV(kvFromPairs(api.KVPairs{{Key: "farmdns/load/web/n1/a", Value: report(10, 1, 0, far)}}))
	seen := time.Now()
	s, nextStale := b.build(1, seen)
	if l := state(s); l.State != LoadKnown || l.Connections != 10 {
		t.Fatalf("just written: %+v", l)
	}
	// The stamp farmdns passes on is no later than when it saw the report.
	if l := state(s); l.Updated.After(seen) {
		t.Errorf("updated %v, after the report was seen at %v", l.Updated, seen)
	}
	// The watcher rebuilds when the report turns stale: not in 9999.
	if nextStale.IsZero() || nextStale.After(seen.Add(DefaultMaxReportAge)) {
		t.Errorf("next stale at %v, want by %v", nextStale, seen.Add(DefaultMaxReportAge))
	}
	if l := state(first(b.build(2, seen.Add(DefaultMaxReportAge+time.Millisecond)))); l.State != LoadStale {
		t.Fatalf("unchanged for longer than max_report_age: %v, want stale", l.State)
	}

	// A report that keeps changing stays fresh, whatever its stamp says.
	b.setKV(kvFromPairs(api.KVPairs{{Key: "farmdns/load/web/n1/a", Value: report(11, 2, 0, far)}}))
	if l := state(first(b.build(3, time.Now().Add(DefaultMaxReportAge/2)))); l.State != LoadKnown || l.Connections != 11 {
		t.Fatalf("changed again: %+v, want known", l)
	}
}

func first(s *Snapshot, _ time.Time) *Snapshot { return s }
