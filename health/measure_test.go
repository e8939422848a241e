package health_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
)

// TestFigurePropagationLatency measures the time from a Consul write (a
// health check update or a KV load put) to the snapshot that shows it, and
// checks the figure README.md and MEASURED.md quote (p50 1.3 ms, p99 7.4 ms
// over 200 changes on a quiet machine): the p50 within ten times, the p99,
// which on a shared machine is its scheduling delay, within twenty (under
// -race with a load average of 17 on 2 cores it reached 63 ms). It runs 60
// changes by default and 200 with FARMDNS_MEASURE=1, which is how the
// quoted figures are made. It does not run in parallel with the package's
// other tests, whose Consul agents would otherwise share the CPU with it.
func TestFigurePropagationLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	changes := 60
	if os.Getenv("FARMDNS_MEASURE") == "1" {
		changes = 200
	}
	a := consultest.Start(t)
	a.Register(t, consultest.Instance{Node: "lat-n1", NodeAddress: "127.0.0.111", Service: "lat", ID: "lat-1", Port: 80})
	w := startWatcher(t, a.Client, health.WatcherConfig{Services: []health.ServiceConfig{{Name: "lat"}}})
	waitSnapshot(t, w, "instance present", targetIs("lat", "lat-1", func(*health.Target) bool { return true }))

	var healthLat, kvLat []time.Duration
	critical := false
	for i := range changes {
		// A random pause, 50-150 ms: two changes of one data set are at least
		// MinInterval apart, so each finds its loop waiting in a blocking
		// query, as on a quiet service (the rate limit's delay under churn
		// is the scale test's lag).
		time.Sleep(50*time.Millisecond + rand.N(100*time.Millisecond))
		start := time.Now()
		if i%2 == 0 {
			critical = !critical
			status, want := api.HealthPassing, health.HealthPassing
			if critical {
				status, want = api.HealthCritical, health.HealthCritical
			}
			a.SetCheck(t, "lat-n1", "lat-1", consultest.ServiceCheckID("lat-1"), status)
			waitSnapshot(t, w, "health change", targetIs("lat", "lat-1", func(t *health.Target) bool { return t.Health == want }))
			healthLat = append(healthLat, time.Since(start))
		} else {
			conns := int64(i)
			putReport(t, a, health.DefaultLoadPrefix, "lat", "lat-n1", "lat-1", conns, conns, 0, time.Now())
			waitSnapshot(t, w, "load change", targetIs("lat", "lat-1", func(t *health.Target) bool { return t.Load.Connections == conns }))
			kvLat = append(kvLat, time.Since(start))
		}
	}
	all := append(slices.Clone(healthLat), kvLat...)
	t.Logf("propagation, Consul write to snapshot, %d changes:", changes)
	t.Logf("  health check: %s", percentiles(healthLat))
	t.Logf("  KV load put:  %s", percentiles(kvLat))
	t.Logf("  all:          %s", percentiles(all))
	if p50, p99 := quantile(all, 0.5), quantile(all, 0.99); p50 > propagationP50Bound || p99 > propagationP99Bound {
		t.Errorf("propagation p50 %v, p99 %v; bounds %v, %v (MEASURED.md: p50 1.3 ms, p99 7.4 ms on a quiet machine)", p50, p99, propagationP50Bound, propagationP99Bound)
	}
}

// Bounds of TestFigurePropagationLatency.
const (
	propagationP50Bound = 13 * time.Millisecond
	propagationP99Bound = 150 * time.Millisecond
)

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func percentiles(d []time.Duration) string {
	return fmt.Sprintf("n=%d p50=%v p90=%v p99=%v max=%v", len(d),
		quantile(d, 0.5).Round(100*time.Microsecond), quantile(d, 0.9).Round(100*time.Microsecond),
		quantile(d, 0.99).Round(100*time.Microsecond), quantile(d, 1).Round(100*time.Microsecond))
}
