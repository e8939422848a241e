package health_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
)

// Bounds of TestScaleFigures: three to five times the figures in
// health/MEASURED.md ("CI check"), so that only a real regression (the
// watcher back at ten full reads a second, say) crosses them on a loaded
// machine. The race detector (make test) slows the decoding several times;
// the cost pacing keeps the CPU share in bounds, not the fill time.
const (
	figInstances = 10000
	figPercent   = 5                // of the loads rewritten every second
	figWindow    = 10 * time.Second // measured
)

// figMaxCPU bounds the watcher's share of one core; measured 4-6 %, 18-32 %
// under -race, where the decoding is slow enough that the cost pacing binds:
// each of the two loops then takes up to a fifth of a core.
func figMaxCPU() float64 {
	if raceEnabled {
		return 0.50
	}
	return 0.30
}

// figMaxFill bounds the time from start to a pool full of loads; measured
// 2.7-6.1 s, 19.5 s under -race.
func figMaxFill() time.Duration {
	if raceEnabled {
		return 60 * time.Second
	}
	return 20 * time.Second
}

// TestScaleFigures checks, on every run, a loose bound for the watcher
// figures README quotes: with 10,000 instances and 5% of their loads
// changing every second, the watcher's CPU (this process's CPU time; the
// load writer is a child process) and the time from start to a pool full
// of loads. TestScale (tag scale) measures the same at 50,000.
func TestScaleFigures(t *testing.T) {
	if testing.Short() {
		t.Skip("a measurement of ~40 s")
	}
	a := consultest.Start(t)
	scaleSetup(t, a, figInstances)

	var wire, body atomic.Int64
	client := countingClient(t, a, &wire, &body)
	start := time.Now()
	w := startWatcher(t, client, health.WatcherConfig{Services: []health.ServiceConfig{{Name: scaleService}}})
	fill := waitFull(t, w, figInstances, start, 2*figMaxFill())

	startLoadWriter(t, a, figInstances, figInstances*figPercent/100, figWindow+2*time.Second)
	time.Sleep(2 * time.Second) // the writer going, the watcher reading at its full rate
	fig := measureScale(t, a, w, &wire, &body, figWindow)
	t.Logf("%d instances, %d%% of the loads rewritten every second: pool full %v after start", figInstances, figPercent, fill.Round(time.Millisecond))
	fig.log(t)
	if fill > figMaxFill() {
		t.Errorf("pool full %v after start, bound %v", fill, figMaxFill())
	}
	if s := fig.cpuShare(); s > figMaxCPU() {
		t.Errorf("watcher CPU %.0f%% of a core, bound %.0f%%", 100*s, 100*figMaxCPU())
	}
	if fig.publishes == 0 {
		t.Errorf("no snapshot published in %v of load changes", fig.elapsed)
	}
}
