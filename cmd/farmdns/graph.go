package main

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// chart is one inline SVG graph on the status page, laid out in Go so the
// template only places numbers and names (which html/template escapes).
type chart struct {
	ID, Title  string
	W, H       int
	X, Y       int // the plot area's top left corner
	PW, PH     int // and its size
	X2, Y2     int // and its bottom right corner
	XTicks     []tick
	YTicks     []tick
	Ref        *chartLine // the reference line, if any
	Lines      []chartLine
	Note       string // under the legend
	NoData     bool   // no line has a point yet
	lo, hi     float64
	start, end time.Time
}

type tick struct {
	Pos   float64
	Label string
}

// chartLine is one series; D is an SVG path: a gap starts a new subpath.
type chartLine struct {
	Name, Color string
	D           string
	Dashed      bool
	Points      int
	Last        string // the latest value, for the legend
	Peak        string
}

// The palette tells up to drawnTargets lines apart: ten strong colours, then
// the same hues lighter.
var palette = [drawnTargets]string{
	"#2b6cb0", "#d9822b", "#2f9e44", "#c92a2a", "#7048e8", "#8d5524", "#d6336c", "#495057", "#a59f00", "#0c8599",
	"#74a9e0", "#f0b070", "#8ce99a", "#ff8787", "#b197fc", "#c9a27e", "#faa2c1", "#adb5bd", "#d8d870", "#66d9e8",
}

const (
	balanceColor = "#1c3f70"
	refColor     = "#2f9e44"
	meanColor    = "#222222"
)

func newChart(id, title string, now time.Time) *chart {
	c := &chart{ID: id, Title: title, W: 620, H: 230, X: 52, Y: 10, PW: 550, PH: 185,
		NoData: true, start: now.Add(-historySpan), end: now}
	c.X2, c.Y2 = c.X+c.PW, c.Y+c.PH
	return c
}

// balanceChart draws max/mean over time, with the line of perfect balance.
func balanceChart(g *poolGraph) *chart {
	c := newChart("balance", "max/mean, last 15 minutes", g.now)
	top := max(1, peak(g.MaxMean))
	step := niceStep(max(top-1, 0.1) / 5)
	// max/mean is never below 1: the axis starts half a step under it, so
	// the reference line stands clear of the frame.
	c.lo, c.hi = 1-step/2, 1+math.Ceil((top-1)/step-1e-9)*step
	if c.hi < 1+step {
		c.hi = 1 + step
	}
	c.axes(step, func(v float64) string { return strconv.FormatFloat(v, 'f', decimals(step), 64) }, 1)
	c.Ref = &chartLine{Name: "1.0: perfectly even", Color: refColor, Dashed: true}
	y := c.y(1)
	c.Ref.D = fmt.Sprintf("M%d %.1fH%d", c.X, y, c.X+c.PW)
	c.add(g, "max/mean", balanceColor, false, g.MaxMean, 3)
	c.Note = fmt.Sprintf("The busiest target's utilisation over the pool's, among the targets that may be answered and report their load; "+
		"1.0 is perfectly even. %d samples, one every %v.", len(g.at), sampleEvery)
	return c
}

// targetsChart draws each drawn target's connections and the pool's mean.
func targetsChart(g *poolGraph) *chart {
	c := newChart("targets", "connections per target, last 15 minutes", g.now)
	top := peak(g.Mean)
	for _, t := range g.Targets {
		top = max(top, peak(t.Connections))
	}
	step := max(1, niceStep(max(top, 5)/5))
	c.lo, c.hi = 0, max(step, math.Ceil(top/step-1e-9)*step)
	c.axes(step, func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }, 0)
	for i, t := range g.Targets {
		c.add(g, t.Target, palette[i%len(palette)], false, t.Connections, 0)
	}
	c.add(g, "mean of the counted targets", meanColor, true, g.Mean, 0)
	if g.Hidden > 0 {
		c.Note = fmt.Sprintf("%d more targets not drawn: the %d busiest over the window are.", g.Hidden, drawnTargets)
	}
	return c
}

// axes lays out the y ticks (every step from base) and the time ticks.
func (c *chart) axes(step float64, label func(float64) string, base float64) {
	for v := base; v <= c.hi+step/1e6; v += step {
		c.YTicks = append(c.YTicks, tick{Pos: c.y(v), Label: label(v)})
	}
	for m := 15; m >= 0; m -= 5 {
		l := fmt.Sprintf("%d min ago", m)
		if m == 0 {
			l = "now"
		}
		c.XTicks = append(c.XTicks, tick{Pos: float64(c.X) + float64(c.PW)*float64(15-m)/15, Label: l})
	}
}

func (c *chart) y(v float64) float64 {
	return float64(c.Y) + float64(c.PH)*(1-(v-c.lo)/(c.hi-c.lo))
}

// x places a sample in time; ok is false for one older than the chart.
func (c *chart) x(at time.Time) (float64, bool) {
	f := float64(at.Sub(c.start)) / float64(c.end.Sub(c.start))
	if f < 0 {
		return 0, false
	}
	return float64(c.X) + float64(c.PW)*min(f, 1), true
}

// add draws s as a line. Missing samples break it; a lone sample is drawn
// as a dot (a zero-length stroke with round caps).
func (c *chart) add(g *poolGraph, name, color string, dashed bool, s series, prec int) {
	l := chartLine{Name: name, Color: color, Dashed: dashed, Last: "-", Peak: "-"}
	var d []byte
	run := 0
	hi := math.Inf(-1)
	for i, v := range s {
		x, ok := c.x(g.at[i])
		if !ok || !finite(v) {
			if run == 1 {
				d = append(d, "h0"...)
			}
			run = 0
			continue
		}
		cmd := byte('L')
		if run == 0 {
			cmd = 'M'
		}
		d = fmt.Appendf(append(d, cmd), "%.1f %.1f", x, c.y(float64(v)))
		run++
		l.Points++
		l.Last = strconv.FormatFloat(float64(v), 'f', prec, 64)
		hi = max(hi, float64(v))
	}
	if run == 1 {
		d = append(d, "h0"...)
	}
	if l.Points > 0 {
		l.Peak = strconv.FormatFloat(hi, 'f', prec, 64)
	}
	l.D = string(d)
	c.Lines = append(c.Lines, l)
	c.NoData = c.NoData && l.Points == 0
}

// peak is the largest finite value of s, 0 if none.
func peak(s series) float64 {
	top := 0.0
	for _, v := range s {
		if finite(v) {
			top = max(top, float64(v))
		}
	}
	return top
}

func finite(v float32) bool { return !math.IsNaN(float64(v)) && !math.IsInf(float64(v), 0) }

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if !(x > 0) || math.IsInf(x, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if x <= m*p*(1+1e-9) {
			return m * p
		}
	}
	return 10 * p
}

// decimals is how many decimals label a tick every step.
func decimals(step float64) int {
	return max(0, int(math.Ceil(-math.Log10(step)-1e-9)))
}
