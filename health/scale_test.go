//go:build scale

package health_test

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// TestScale registers 5,000 instances on 1,000 catalog nodes, has a separate
// process rewrite every load report every 2 s, and reports the watcher's CPU
// time and the bytes it reads from Consul. It is a measurement, not a check
// for every run, so it is built only with the scale tag:
//
//	go test -tags scale -run TestScale -v ./health/
//
// FARMDNS_SCALE_SECONDS sets the measured window (default 30) and
// FARMDNS_SCALE_MIN_INTERVAL the watcher's MinInterval (default 100ms).
func TestScale(t *testing.T) {
	window := 30 * time.Second
	if s, err := strconv.Atoi(os.Getenv("FARMDNS_SCALE_SECONDS")); err == nil && s > 0 {
		window = time.Duration(s) * time.Second
	}
	var minInterval time.Duration
	if d, err := time.ParseDuration(os.Getenv("FARMDNS_SCALE_MIN_INTERVAL")); err == nil {
		minInterval = d
	}
	runScale(t, 5000, window, minInterval, true)
}
