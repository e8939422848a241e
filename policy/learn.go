package policy

import "math"

// learner estimates how many new clients an answer brings: c1 to the
// target named first, c2 to each later one. Every load report is a sample:
// x1 and x2 answers named the target first and later since its previous
// report, and y clients arrived meanwhile (growth of the reporter's
// cumulative Accepted counter).
//
// The estimate is pooled over all targets rather than kept per target: which
// resolver, and so how many clients, an answer reaches is random, the same
// for every target, and a per-target estimate would carry that noise. Its
// two parts move at different speeds. The ratio c2/c1 (how much clients
// prefer the first record) depends on resolver and client software and is
// fitted slowly by least squares. The scale c1 follows the arrival rate,
// which can jump (clients of a failed target reconnecting at once), and is a
// short exponentially weighted ratio of arrivals to answers. A second farmdns
// instance answering the same resolvers shows up here as clients its answers
// did not bring, which raises the estimate in proportion: each instance then
// predicts the load the other one adds.
type learner struct {
	sy, sx                  float64 // fast: decayed sums of y and x1 + omega*x2
	s11, s12, s22, s1y, s2y float64 // slow: moments for the split
	omega                   float64 // c2 / c1
	c1                      float64
}

const (
	priorClients = 1    // clients per expected client of a first-named answer, before anything is learned
	priorWeight  = 5    // how many answers' worth the prior counts for
	priorOmega   = 0.25 // later positions' share relative to the first
	slowFactor   = 10   // the split's time constant over the scale's
)

func (l *learner) init() { l.omega, l.c1 = priorOmega, priorClients }

// decay ages the sums by dt seconds with time constant tau.
func (l *learner) decay(dt, tau float64) {
	if dt <= 0 {
		return
	}
	f := math.Exp(-dt / tau)
	s := math.Exp(-dt / (tau * slowFactor))
	l.sy *= f
	l.sx *= f
	l.s11 *= s
	l.s12 *= s
	l.s22 *= s
	l.s1y *= s
	l.s2y *= s
}

// add takes in one sample. A negative or non-finite one is dropped: a
// single infinite x would make sx infinite, and the scale zero, for good.
func (l *learner) add(x1, x2, y float64) {
	if x1 < 0 || x2 < 0 || y < 0 || math.IsNaN(x1+x2+y) || math.IsInf(x1+x2+y, 0) {
		return
	}
	l.sy += y
	l.sx += x1 + l.omega*x2
	l.s11 += x1 * x1
	l.s12 += x1 * x2
	l.s22 += x2 * x2
	l.s1y += x1 * y
	l.s2y += x2 * y
}

// estimate updates and returns (c1, c2).
func (l *learner) estimate() (float64, float64) {
	if det := l.s11*l.s22 - l.s12*l.s12; l.s11 > 0 && l.s22 > 0 && det > 1e-6*l.s11*l.s22 {
		a := (l.s1y*l.s22 - l.s2y*l.s12) / det
		b := (l.s2y*l.s11 - l.s1y*l.s12) / det
		if a > 0 && b >= 0 {
			l.omega = min(b/a, 1)
		}
	}
	l.c1 = (l.sy + priorClients*priorWeight) / (l.sx + priorWeight)
	return l.c1, l.c1 * l.omega
}
