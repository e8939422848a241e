package health

import (
	"testing"
	"time"
)

func TestPause(t *testing.T) {
	const ms = time.Millisecond
	for _, tc := range []struct {
		min, cost, age, want time.Duration
	}{
		{100 * ms, 0, 30 * time.Second, 100 * ms},                               // nothing read yet
		{100 * ms, 10 * ms, 30 * time.Second, 100 * ms},                         // small data set: MinInterval
		{100 * ms, 200 * ms, 30 * time.Second, 800 * ms},                        // large one: four times the cost
		{100 * ms, 5 * time.Second, 30 * time.Second, 7500 * ms},                // never past a quarter of max_report_age
		{10 * time.Second, 5 * time.Second, 30 * time.Second, 10 * time.Second}, // nor below MinInterval
	} {
		if got := pause(tc.min, tc.cost, tc.age); got != tc.want {
			t.Errorf("pause(%v, %v, %v) = %v, want %v", tc.min, tc.cost, tc.age, got, tc.want)
		}
	}
	if got := readCost(time.Second, 300*ms); got != 700*ms {
		t.Errorf("readCost = %v, want 700ms", got)
	}
	if got := readCost(time.Second, 2*time.Second); got != 0 {
		t.Errorf("readCost of a clock step = %v, want 0", got)
	}
}
