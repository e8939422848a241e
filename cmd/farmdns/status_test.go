package main

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"image/png"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStatusPage checks the page's structure and the JSON behind it, for a
// farm fed by a real Consul.
func TestStatusPage(t *testing.T) {
	f := startFarm(t, 3, "        answers: 2\n", false)
	eventually(t, 5*time.Second, "pool filled", func() bool { return len(f.ask(t, 1)) == 2 })
	f.consul.SetCheck(t, "n3", "", "_node_maintenance", "critical")
	eventually(t, 2*time.Second, "n3 draining", func() bool { return strings.Contains(httpBody(t, f.web()+"/status.json"), `"draining": true`) })
	for i := range 10 {
		f.ask(t, i)
	}

	var st status
	if err := json.Unmarshal([]byte(httpBody(t, f.web()+"/status.json")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Pools) != 1 || len(st.Pools[0].Targets) != 3 || st.Consul == nil || !st.Consul.Ready || len(st.Zones) != 1 {
		t.Fatalf("status.json: %+v", st)
	}
	var share float64
	for _, tg := range st.Pools[0].Targets {
		share += tg.RecentShare
		if tg.Node == "n3" && (!tg.Draining || tg.Eligible) {
			t.Errorf("n3: %+v", tg)
		}
		if tg.Capacity != 1000 || tg.LoadState != "known" || tg.Address == "" {
			t.Errorf("target %+v lacks what Consul reported", tg)
		}
	}
	if share < 0.99 || share > 1.01 {
		t.Errorf("recent shares add up to %v", share)
	}

	page := httpBody(t, f.web()+"/status")
	d := xml.NewDecoder(strings.NewReader(page))
	d.Strict, d.AutoClose, d.Entity = false, xml.HTMLAutoClose, xml.HTMLEntity
	rows, bars := 0, 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("status page does not parse: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			for _, a := range se.Attr {
				if a.Name.Local == "class" && (a.Value == "target" || strings.HasPrefix(a.Value, "target ")) {
					rows++
				}
				if a.Name.Local == "class" && a.Value == "bar" {
					bars++
				}
			}
		}
	}
	if rows != 3 || bars != 3 {
		t.Errorf("%d target rows and %d load bars, want 3 of each", rows, bars)
	}
	for _, want := range []string{"Pool farm.example.com.", "n1/ws-n1", "127.0.0.13:8080", "draining", "in sync", `http-equiv="refresh"`} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
}

// TestStatusPageInChromium renders the page in headless Chromium and keeps a
// screenshot (in $FARMDNS_SCREENSHOTS, or the test's temp dir). The loads
// change while the sampler in the server's run loop takes a few samples, so
// the balance graph has lines to draw: they must lay out with a size, and
// show in the screenshot.
func TestStatusPageInChromium(t *testing.T) {
	chromium := requireTool(t, "chromium")
	f := startFarm(t, 3, "        answers: 2\n", false)
	eventually(t, 5*time.Second, "pool filled", func() bool { return len(f.ask(t, 1)) == 2 })
	const samples = 4
	for k := range samples {
		// n1 gets busier and n3 quieter, one step a sample.
		putLoad(t, f.consul, 1, int64(500+60*k))
		putLoad(t, f.consul, 2, 500)
		putLoad(t, f.consul, 3, int64(500-60*k))
		eventually(t, 3*sampleEvery, "a sample of the new loads", func() bool {
			g := statusHistory(t, f)
			return g != nil && len(g.MaxMean) > k && len(g.Targets) == 3 && peak(g.Targets[0].Connections) == float64(500+60*k)
		})
	}
	g := statusHistory(t, f)
	if len(g.Targets) != 3 || g.Targets[0].Target != "n1/ws-n1" || peak(g.MaxMean) < 1.1 || g.StepSeconds != 5 {
		t.Fatalf("status.json history: %+v", g)
	}

	dir := os.Getenv("FARMDNS_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	shot := filepath.Join(dir, "status.png")
	profile := t.TempDir()
	flags := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + profile, "--window-size=1400,1300"}
	run := func(args ...string) string {
		cmd := exec.Command(chromium, append(flags, args...)...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", args, err)
		}
		return string(out)
	}
	dom := run("--dump-dom", f.web()+"/status")
	if n := strings.Count(dom, `<tr class="target`); n != 3 {
		t.Errorf("rendered page has %d target rows, want 3", n)
	}
	if n := strings.Count(dom, `<svg class="chart"`); n != 2 {
		t.Errorf("rendered page has %d charts, want 2", n)
	}

	// The page has no script of its own: a copy of it, served from another
	// loopback port with a script added, measures what Chromium laid out.
	page := httpBody(t, f.web()+"/status")
	measured := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, strings.Replace(page, "</body>", measureCharts+"</body>", 1))
	}))
	defer measured.Close()
	sizes := map[string][]string{}
	for _, line := range strings.Split(run("--dump-dom", measured.URL), "\n") {
		if rest, ok := strings.CutPrefix(line, "measured "); ok {
			fs := strings.Fields(rest)
			sizes[fs[0]] = fs[1:]
		}
	}
	// The balance chart: max/mean; the targets chart: three targets and
	// their mean. Each line spans the samples, so it is wider than a dot.
	for id, lines := range map[string]int{"graph-balance": 1, "graph-targets": 4} {
		sz := sizes[id]
		if len(sz) != 1+lines || sz[0] != "620x230" {
			t.Errorf("%s laid out as %v, want a 620x230 chart and %d lines", id, sz, lines)
			continue
		}
		for _, wh := range sz[1:] {
			var w, h float64
			if _, err := fmt.Sscanf(wh, "%fx%f", &w, &h); err != nil || w < 2 {
				t.Errorf("%s: a line laid out %s wide and high", id, wh)
			}
		}
	}

	run("--screenshot="+shot, f.web()+"/status")
	info, err := os.Stat(shot)
	if err != nil || info.Size() < 10_000 {
		t.Fatalf("screenshot %s: %v (%d bytes)", shot, err, info.Size())
	}
	if n := pixelsNear(t, shot, balanceColor); n < 10 {
		t.Errorf("screenshot has %d pixels of the max/mean line's colour, want it drawn", n)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, info.Size())
}

// measureCharts writes, for each chart, its size and the size of each of
// its lines, as Chromium laid them out.
const measureCharts = `<script>
for (const f of document.querySelectorAll("figure.graph")) {
  const svg = f.querySelector("svg.chart"), r = svg.getBoundingClientRect();
  const out = ["measured", f.id, Math.round(r.width) + "x" + Math.round(r.height)];
  for (const p of svg.querySelectorAll("path.series")) {
    const b = p.getBBox();
    out.push(b.width.toFixed(1) + "x" + b.height.toFixed(1));
  }
  const pre = document.createElement("pre");
  pre.textContent = "\n" + out.join(" ") + "\n";
  document.body.appendChild(pre);
}
</script>`

// statusHistory returns the first pool's history from /status.json.
func statusHistory(t *testing.T, f *farm) *poolGraph {
	t.Helper()
	var st struct {
		Pools []struct {
			History *struct {
				poolGraph
				MaxMean []*float32 `json:"max_mean"`
				Targets []struct {
					Target      string     `json:"target"`
					Connections []*float32 `json:"connections"`
				} `json:"targets"`
			} `json:"history"`
		} `json:"pools"`
	}
	if err := json.Unmarshal([]byte(httpBody(t, f.web()+"/status.json")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Pools) == 0 || st.Pools[0].History == nil {
		return nil
	}
	h := st.Pools[0].History
	g := h.poolGraph
	nan := func(vs []*float32) series {
		s := make(series, len(vs))
		for i, v := range vs {
			s[i] = float32(math.NaN())
			if v != nil {
				s[i] = *v
			}
		}
		return s
	}
	g.MaxMean, g.Targets = nan(h.MaxMean), nil
	for _, tg := range h.Targets {
		g.Targets = append(g.Targets, targetGraph{Target: tg.Target, Connections: nan(tg.Connections)})
	}
	return &g
}

// pixelsNear counts the pixels of the PNG at path within a small distance of
// the colour hex (#rrggbb).
func pixelsNear(t *testing.T, path, hex string) int {
	t.Helper()
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	img, err := png.Decode(file)
	if err != nil {
		t.Fatal(err)
	}
	var want [3]int
	fmt.Sscanf(hex, "#%02x%02x%02x", &want[0], &want[1], &want[2])
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			d := 0
			for i, c := range []uint32{r, g, bl} {
				d += abs(int(c>>8) - want[i])
			}
			if d < 30 {
				n++
			}
		}
	}
	return n
}

func abs(x int) int { return max(x, -x) }

func (f *farm) web() string { return "http://" + f.srv.webLn.Addr().String() }
