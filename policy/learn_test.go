package policy

import (
	"math"
	"testing"
)

// TestLearnerRejectsNonFinite: a sample with an infinite or NaN part is
// dropped; one taken in would pin the scale at zero (or NaN) for good.
func TestLearnerRejectsNonFinite(t *testing.T) {
	inf := math.Inf(1)
	for _, s := range [][3]float64{{inf, 0, 10}, {1, inf, 10}, {1, 0, inf}, {math.NaN(), 0, 10}, {inf, inf, inf}} {
		var l learner
		l.init()
		l.add(10, 2, 30)
		before, _ := l.estimate()
		l.add(s[0], s[1], s[2])
		if c1, c2 := l.estimate(); c1 != before || math.IsNaN(c2) || math.IsInf(c2, 0) {
			t.Errorf("after the sample %v: scale %v, %v; want %v as before", s, c1, c2, before)
		}
	}
}
