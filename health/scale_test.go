//go:build scale

package health_test

import (
	"cmp"
	"os"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
)

// TestScale registers n instances on 1,000 catalog nodes, has a separate
// process rewrite a share of the load reports every second, and reports the
// watcher's CPU time, the bytes it reads from Consul, how soon the pool
// fills and the memory it takes. It is a measurement, not a check for every
// run (TestScaleFigures is the check), so it is built only with the scale tag:
//
//	go test -tags scale -run 'TestScale$' -v ./health/
//
// Settings (environment): FARMDNS_SCALE_INSTANCES (default 50000),
// FARMDNS_SCALE_CHANGE_PERCENT, the share of reports rewritten per second
// (default 5), FARMDNS_SCALE_SECONDS, the measured window (default 30),
// FARMDNS_SCALE_MIN_INTERVAL, the watcher's MinInterval (default its own),
// FARMDNS_SCALE_CPUPROFILE, a file for a CPU profile of the window.
func TestScale(t *testing.T) {
	n := envInt("FARMDNS_SCALE_INSTANCES", 50000)
	pct := envInt("FARMDNS_SCALE_CHANGE_PERCENT", 5)
	window := time.Duration(envInt("FARMDNS_SCALE_SECONDS", 30)) * time.Second
	a := consultest.Start(t)
	scaleSetup(t, a, n)

	var wire, body atomic.Int64
	client := countingClient(t, a, &wire, &body)
	// A 50,000-instance answer from a dev agent on a shared machine can take
	// longer than the default query timeout (WaitTime plus 5 s).
	wcfg := health.WatcherConfig{Services: []health.ServiceConfig{{Name: scaleService}}, WaitTime: 3 * time.Minute, MaxStaleness: 10 * time.Minute}
	if d, err := time.ParseDuration(os.Getenv("FARMDNS_SCALE_MIN_INTERVAL")); err == nil {
		wcfg.MinInterval = d
	}
	start := time.Now()
	w := startWatcher(t, client, wcfg)
	t.Logf("pool full (%d targets with loads) %v after start", n, waitFull(t, w, n, start, 5*time.Minute).Round(time.Millisecond))

	perSec := n * pct / 100
	startLoadWriter(t, a, n, perSec, window+4*time.Second+20*time.Second)
	time.Sleep(4 * time.Second) // warm up: the writer going, Consul's answers at their full rate
	if p := os.Getenv("FARMDNS_SCALE_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	fig := measureScale(t, a, w, &wire, &body, window)
	t.Logf("scale: %d instances, %d%% of the loads (%d/s) rewritten every second, min interval %v, measured over %v:",
		n, pct, perSec, cmp.Or(wcfg.MinInterval, health.DefaultMinInterval), fig.elapsed.Round(time.Millisecond))
	fig.log(t)
	c := w.Snapshot().Pool(scaleService).Counts()
	t.Logf("  final pool: %+v", c)

	// Health changes while the loads keep churning: each one makes Consul
	// send the whole service again.
	var flips []time.Duration
	for i := range 4 {
		node, id := scaleKey(i * 97)
		status, want := api.HealthCritical, health.HealthCritical
		if i%2 == 1 {
			node, id = scaleKey((i - 1) * 97)
			status, want = api.HealthPassing, health.HealthPassing
		}
		start := time.Now()
		a.SetCheck(t, node, id, consultest.ServiceCheckID(id), status)
		waitLong(t, w, time.Minute, targetIs(scaleService, id, func(t *health.Target) bool { return t.Health == want }))
		flips = append(flips, time.Since(start))
	}
	t.Logf("  health check write to snapshot, under the load churn: %s", percentiles(flips))
	if c.Targets != n || c.LoadKnown+c.LoadStale != n {
		t.Errorf("pool lost targets or loads: %+v", c)
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// waitLong is waitSnapshot with a longer limit and no dump of the snapshot
// (50,000 targets) on failure.
func waitLong(t testing.TB, w *health.Watcher, limit time.Duration, cond func(*health.Snapshot) bool) {
	t.Helper()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for s := w.Snapshot(); !cond(s); s = w.Snapshot() {
		select {
		case <-s.Superseded():
		case <-deadline.C:
			t.Fatalf("health flip not seen after %v", limit)
		}
	}
}
