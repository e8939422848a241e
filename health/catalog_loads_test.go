package health

import (
	"testing"
	"time"
)

// TestCatalogLoads: a report is known while fresh, stale past the maximum
// age, malformed when it does not parse, unknown when missing; a report
// stamped in the future ages from when it was read.
func TestCatalogLoads(t *testing.T) {
	now := time.Now()
	stamp := func(t time.Time) []byte {
		return []byte(`{"connections":7,"accepted":9,"capacity":100,"updated":"` + t.UTC().Format(time.RFC3339Nano) + `"}`)
	}
	l := NewCatalogLoads("/farmdns/load/", 30*time.Second, map[string][]byte{
		LoadKey("farmdns/load", "web", "n1", "web-1"): stamp(now),
		LoadKey("farmdns/load", "web", "n2", "web-2"): stamp(now.Add(-time.Minute)),
		LoadKey("farmdns/load", "web", "n3", "web-3"): []byte(`{"connections":-1}`),
		LoadKey("farmdns/load", "web", "n4", "web-4"): stamp(now.Add(time.Hour)),
	}, now)
	for _, tc := range []struct {
		node, id string
		at       time.Time
		want     LoadState
	}{
		{"n1", "web-1", now, LoadKnown},
		{"n1", "web-1", now.Add(31 * time.Second), LoadStale},
		{"n2", "web-2", now, LoadStale},
		{"n3", "web-3", now, LoadMalformed},
		{"n4", "web-4", now.Add(31 * time.Second), LoadStale},
		{"n5", "web-5", now, LoadUnknown},
	} {
		if got := l.Load("web", tc.node, tc.id, tc.at); got.State != tc.want {
			t.Errorf("%s/%s at +%v: %v, want %v", tc.node, tc.id, tc.at.Sub(now), got.State, tc.want)
		}
	}
	if got := l.Load("web", "n1", "web-1", now); got.Connections != 7 || got.Capacity != 100 || got.Accepted != 9 {
		t.Errorf("n1 load %+v, want 7 connections of 100, 9 accepted", got)
	}
	if got := (*CatalogLoads)(nil).Load("web", "n1", "web-1", now); got.State != LoadUnknown {
		t.Errorf("nil loads: %v", got.State)
	}
}
