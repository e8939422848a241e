package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/farmdns/farmdns/dnsserver"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// target is a node of pool "p" with a current load report.
func target(i int, conns int64) dnsserver.TargetStatus {
	return dnsserver.TargetStatus{Node: fmt.Sprintf("n%d", i), ServiceID: "ws", Eligible: true,
		Connections: conns, Capacity: 1000, LoadState: "known"}
}

func pool(ts ...dnsserver.TargetStatus) []dnsserver.PoolStatus {
	return []dnsserver.PoolStatus{{Name: "p", Targets: ts}}
}

func at(i int) time.Time { return t0.Add(time.Duration(i) * sampleEvery) }

// TestHistoryRing: the ring keeps the latest historySlots samples, oldest
// first, across many wraparounds.
func TestHistoryRing(t *testing.T) {
	var h history
	if g := h.graph("p", t0); g != nil {
		t.Fatalf("a graph before any sample: %+v", g)
	}
	n := 2*historySlots + 41
	for i := range n {
		// n1 carries i connections, n2 twice that: max/mean 4/3 once
		// there are any.
		h.record(at(i), pool(target(1, int64(i)), target(2, int64(2*i))))
	}
	g := h.graph("p", at(n-1))
	if len(g.at) != historySlots || len(g.MaxMean) != historySlots || len(g.Targets) != 2 {
		t.Fatalf("%d samples, %d max/mean, %d targets; want %d, %d, 2", len(g.at), len(g.MaxMean), len(g.Targets), historySlots, historySlots)
	}
	first := n - historySlots
	if !g.Start.Equal(at(first)) || !g.at[historySlots-1].Equal(at(n-1)) {
		t.Errorf("samples from %v to %v, want %v to %v", g.Start, g.at[historySlots-1], at(first), at(n-1))
	}
	for i := range historySlots {
		want := float32(first + i)
		if g.Targets[0].Target != "n2/ws" || g.Targets[1].Connections[i] != want || g.Targets[0].Connections[i] != 2*want {
			t.Fatalf("sample %d: %s %v, %s %v; want n2/ws %v, n1/ws %v", i, g.Targets[0].Target, g.Targets[0].Connections[i],
				g.Targets[1].Target, g.Targets[1].Connections[i], 2*want, want)
		}
		if math.Abs(float64(g.MaxMean[i])-4.0/3) > 1e-6 || g.Mean[i] != 1.5*want {
			t.Fatalf("sample %d: max/mean %v, mean %v; want 1.333, %v", i, g.MaxMean[i], g.Mean[i], 1.5*want)
		}
	}
}

// TestHistoryAging: a target that vanishes stays while any of its samples is
// in the ring, then is forgotten; a pool that vanishes is forgotten at once.
func TestHistoryAging(t *testing.T) {
	var h history
	i := 0
	for ; i < 10; i++ {
		h.record(at(i), pool(target(1, 10), target(2, 20)))
	}
	for ; i < 10+historySlots-1; i++ {
		h.record(at(i), pool(target(1, 10)))
	}
	g := h.graph("p", at(i-1))
	if len(g.Targets) != 2 || g.Targets[0].Target != "n2/ws" || g.Targets[0].Connections[0] != 20 ||
		!math.IsNaN(float64(g.Targets[0].Connections[1])) {
		t.Fatalf("n2's last sample is still in the ring, want it drawn: %+v", g.Targets)
	}
	h.record(at(i), pool(target(1, 10)))
	if g := h.graph("p", at(i)); len(g.Targets) != 1 || g.Targets[0].Target != "n1/ws" || g.Hidden != 0 {
		t.Fatalf("n2's samples are all overwritten, want it gone: %+v", g.Targets)
	}
	h.record(at(i+1), []dnsserver.PoolStatus{{Name: "q"}})
	if h.graph("p", at(i+1)) != nil || len(h.pools) != 1 {
		t.Errorf("pool p was removed and is still kept")
	}
}

// TestHistoryBounded: a pool of many targets, whose busiest change all the
// time, keeps at most trackedTargets of them and draws drawnTargets, saying
// how many it leaves out.
func TestHistoryBounded(t *testing.T) {
	var h history
	const targets = 1000
	for i := range 3 * historySlots {
		ts := make([]dnsserver.TargetStatus, targets)
		for j := range ts {
			// A different band of targets is the busiest in each sample.
			ts[j] = target(j, int64((j+7*i)%targets))
		}
		h.record(at(i), pool(ts...))
		if n := len(h.pools["p"].targets); n > trackedTargets {
			t.Fatalf("sample %d: %d targets tracked, bound %d", i, n, trackedTargets)
		}
	}
	g := h.graph("p", at(3*historySlots-1))
	if len(g.Targets) != drawnTargets || g.Hidden != targets-drawnTargets {
		t.Errorf("%d targets drawn, %d said hidden; want %d and %d", len(g.Targets), g.Hidden, drawnTargets, targets-drawnTargets)
	}
	// The latest sample's busiest are all tracked.
	for j := targets - trackedTargets; j < targets; j++ {
		k := targetID{fmt.Sprintf("n%d", (j-7*(3*historySlots-1)%targets+targets)%targets), "ws"}
		if h.pools["p"].targets[k] == nil {
			t.Fatalf("%s is among the latest busiest and not tracked", k)
		}
	}
}

func TestBalance(t *testing.T) {
	lb := target(9, 5000)
	lb.LB = true
	draining := target(8, 900)
	draining.Eligible = false
	stale := target(7, 900)
	stale.LoadState = "stale"
	small := target(6, 300)
	small.Capacity = 250
	unlimited := target(5, 200)
	unlimited.Capacity = 0
	for _, c := range []struct {
		name      string
		ts        []dnsserver.TargetStatus
		ratio     float64 // NaN for none
		mean      float64
		wantEmpty bool
	}{
		{"even", []dnsserver.TargetStatus{target(1, 100), target(2, 100)}, 1, 100, false},
		{"one busy", []dnsserver.TargetStatus{target(1, 300), target(2, 100)}, 1.5, 200, false},
		{"LBs, draining and stale reports do not count", []dnsserver.TargetStatus{target(1, 100), target(2, 100), lb, draining, stale}, 1, 100, false},
		// 300/250 = 1.2 against (400/1250) = 0.32
		{"by utilisation", []dnsserver.TargetStatus{target(1, 100), small}, 1.2 / 0.32, 200, false},
		{"by connections when a capacity is unlimited", []dnsserver.TargetStatus{target(1, 100), unlimited}, 200 / 150.0, 150, false},
		{"no connections", []dnsserver.TargetStatus{target(1, 0), target(2, 0)}, math.NaN(), 0, false},
		{"no targets", nil, math.NaN(), math.NaN(), true},
	} {
		r, m := balance(c.ts)
		if !same(r, c.ratio) || !same(m, c.mean) {
			t.Errorf("%s: max/mean %v, mean %v; want %v, %v", c.name, r, m, c.ratio, c.mean)
		}
	}
}

func same(a, b float64) bool {
	return math.IsNaN(a) && math.IsNaN(b) || math.Abs(a-b) < 1e-9
}

// TestChartSVG renders both charts and reads them back as XML: one path per
// series with a point per sample, gaps as new subpaths, and never a NaN or
// an Inf, whatever the pool holds.
func TestChartSVG(t *testing.T) {
	full := func() *history {
		var h history
		for i := range historySlots {
			ts := []dnsserver.TargetStatus{target(1, int64(100+i)), target(2, 100), target(3, 50)}
			if i >= 100 {
				ts = ts[:2] // n3 dies
			}
			h.record(at(i), pool(ts...))
		}
		return &h
	}
	empty := func() *history {
		var h history
		for i := range 5 {
			h.record(at(i), pool())
		}
		return &h
	}
	idle := func() *history {
		var h history
		for i := range 5 {
			h.record(at(i), pool(target(1, 0), target(2, 0)))
		}
		return &h
	}
	lone := func() *history {
		var h history
		h.record(at(0), pool(target(1, 7)))
		return &h
	}
	for _, c := range []struct {
		name string
		h    *history
		now  time.Time
		// paths and their points (M or L commands) in each chart, and
		// the subpaths (M commands) of the target chart
		balance, targets []int
		subpaths         int
	}{
		{"full", full(), at(historySlots - 1), []int{historySlots}, []int{historySlots, historySlots, 100, historySlots}, 4},
		// The newest sample is at the right edge; the oldest just inside.
		{"later", full(), at(historySlots - 1).Add(time.Minute), []int{historySlots - 11}, []int{historySlots - 11, historySlots - 11, 100 - 11, historySlots - 11}, 4},
		{"empty pool", empty(), at(4), nil, nil, 0},
		{"no connections", idle(), at(4), nil, []int{5, 5, 5}, 3},
		{"one sample", lone(), at(0), []int{1}, []int{1, 1}, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := c.h.graph("p", c.now)
			for _, ch := range []struct {
				c    *chart
				want []int
			}{{balanceChart(g), c.balance}, {targetsChart(g), c.targets}} {
				var b bytes.Buffer
				if err := statusPage.ExecuteTemplate(&b, "chart", ch.c); err != nil {
					t.Fatal(err)
				}
				svg := b.String()
				if strings.Contains(svg, "NaN") || strings.Contains(svg, "Inf") {
					t.Errorf("%s chart has NaN or Inf:\n%s", ch.c.ID, svg)
				}
				paths, refs := svgPaths(t, svg)
				points := make([]int, len(paths))
				subpaths := 0
				for i, d := range paths {
					points[i] = strings.Count(d, "M") + strings.Count(d, "L")
					subpaths += strings.Count(d, "M")
				}
				if fmt.Sprint(points) != fmt.Sprint(ch.want) && !(len(points) == 0 && len(ch.want) == 0) {
					t.Errorf("%s chart: paths with %v points, want %v", ch.c.ID, points, ch.want)
				}
				if ch.c.ID == "targets" && subpaths != c.subpaths {
					t.Errorf("targets chart: %d subpaths, want %d", subpaths, c.subpaths)
				}
				if want := map[string]int{"balance": 1, "targets": 0}[ch.c.ID]; refs != want {
					t.Errorf("%s chart: %d reference lines, want %d", ch.c.ID, refs, want)
				}
				if ch.c.NoData != (len(ch.want) == 0) || strings.Contains(svg, "no values yet") != ch.c.NoData {
					t.Errorf("%s chart: NoData %t with %d lines", ch.c.ID, ch.c.NoData, len(ch.want))
				}
				if !strings.Contains(svg, "15 min ago") || !strings.Contains(svg, ">now<") {
					t.Errorf("%s chart lacks time labels", ch.c.ID)
				}
			}
		})
	}
}

// svgPaths parses a rendered chart strictly as XML and returns the d of
// each series path inside its <svg>, and how many reference paths it has.
func svgPaths(t *testing.T, doc string) (series []string, refs int) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(doc))
	inSVG := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not XML: %v\n%s", err, doc)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			if e.Name.Local == "svg" {
				inSVG++
			}
			if e.Name.Local != "path" || inSVG == 0 {
				continue
			}
			attr := map[string]string{}
			for _, a := range e.Attr {
				attr[a.Name.Local] = a.Value
			}
			switch attr["class"] {
			case "series":
				series = append(series, attr["d"])
			case "ref":
				refs++
			}
		case xml.EndElement:
			if e.Name.Local == "svg" {
				inSVG--
			}
		}
	}
	return series, refs
}

// TestHistoryJSON: the series go to /status.json compactly, gaps as null.
func TestHistoryJSON(t *testing.T) {
	var h history
	h.record(at(0), pool(target(1, 0), target(2, 0)))
	h.record(at(1), pool(target(1, 30), target(2, 10)))
	b, err := json.Marshal(h.graph("p", at(1)))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"start":"2026-01-02T03:04:05Z","step_seconds":5,"max_mean":[null,1.5],"mean_connections":[0,20],` +
		`"targets":[{"target":"n1/ws","connections":[0,30]},{"target":"n2/ws","connections":[0,10]}],"targets_not_drawn":0}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
}

// BenchmarkHistoryRecord50k is one sample of a pool of 50,000 targets, as
// the sampler takes every sampleEvery whether or not anyone looks.
//
//	go test -run XXX -bench BenchmarkHistoryRecord50k ./cmd/farmdns/
func BenchmarkHistoryRecord50k(b *testing.B) {
	ts := make([]dnsserver.TargetStatus, 50000)
	for j := range ts {
		ts[j] = target(j, int64(j*7919%20000))
	}
	var h history
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// The busiest change a little between samples.
		ts[i%len(ts)].Connections, ts[(i+1)%len(ts)].Connections = 30000, 0
		h.record(at(i), pool(ts...))
		i++
	}
}
