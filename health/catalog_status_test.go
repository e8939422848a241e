package health

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCatalogStatusReady: the catalog is ready while every blocking query
// answered within max staleness; the view stays fresh on their answers
// while its reads succeed, and goes stale with a failing read.
func TestCatalogStatusReady(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var s catalogStatus
	if ok, _ := s.status().Ready(t0); ok {
		t.Fatal("ready before the watcher started")
	}
	s.start(t0, time.Minute)
	if ok, why := s.status().Ready(t0.Add(30 * time.Second)); !ok {
		t.Fatalf("not ready within max staleness of the start: %s", why)
	}
	if ok, why := s.status().Ready(t0.Add(2 * time.Minute)); ok || !strings.Contains(why, "catalog nodes") {
		t.Fatalf("ready %v (%s) two minutes after a start without Consul", ok, why)
	}
	answer := func(at time.Time) {
		for _, n := range []string{"nodes", "services"} {
			s.ok(n, 7, at)
		}
	}
	answer(t0.Add(time.Second))
	s.ok("view", 7, t0.Add(2*time.Second))
	// A quiet catalog: queries answer every 50 s, nothing is read again.
	for k := 1; k <= 5; k++ {
		answer(t0.Add(time.Duration(k) * 50 * time.Second))
	}
	if ok, why := s.status().Ready(t0.Add(250*time.Second + 30*time.Second)); !ok {
		t.Fatalf("quiet catalog not ready: %s", why)
	}
	// A change whose read keeps failing: the view ages although the
	// queries answer.
	s.fail("view", errors.New("boom"), t0.Add(251*time.Second))
	answer(t0.Add(300 * time.Second))
	st := s.status()
	if ok, why := st.Ready(t0.Add(320 * time.Second)); ok || !strings.Contains(why, "catalog view") || !strings.Contains(why, "boom") {
		t.Fatalf("ready %v (%s) with the view's read failing for 70 s", ok, why)
	}
	if v := st.DataSets[2]; v.Name != "view" || v.Errors != 1 || !v.Failing || v.Index != 7 {
		t.Errorf("view data set %+v", v)
	}
	s.ok("view", 9, t0.Add(321*time.Second))
	if ok, why := s.status().Ready(t0.Add(322 * time.Second)); !ok {
		t.Fatalf("not ready once the read succeeded: %s", why)
	}
}

// TestCatalogCollectorLint: the catalog watcher's metrics pass promlint.
func TestCatalogCollectorLint(t *testing.T) {
	w := NewCatalogWatcher(CatalogWatcherConfig{}, nil, nil)
	w.stat.start(time.Now(), time.Minute)
	w.stat.ok("nodes", 3, time.Now())
	problems, err := testutil.CollectAndLint(w.Collector())
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
	if n := testutil.CollectAndCount(w.Collector()); n != 1+len(catalogDataSets)+1 {
		t.Errorf("%d series, want a last sync, %d error counts and ready", n, len(catalogDataSets))
	}
}
