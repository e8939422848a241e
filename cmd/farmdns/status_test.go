package main

import (
	"encoding/json"
	"encoding/xml"
	"io"
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
// screenshot (in $FARMDNS_SCREENSHOTS, or the test's temp dir).
func TestStatusPageInChromium(t *testing.T) {
	chromium := requireTool(t, "chromium")
	f := startFarm(t, 3, "        answers: 2\n", false)
	eventually(t, 5*time.Second, "pool filled", func() bool { return len(f.ask(t, 1)) == 2 })
	dir := os.Getenv("FARMDNS_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	shot := filepath.Join(dir, "status.png")
	profile := t.TempDir()
	flags := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + profile, "--window-size=1400,900"}
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
	run("--screenshot="+shot, f.web()+"/status")
	info, err := os.Stat(shot)
	if err != nil || info.Size() < 10_000 {
		t.Fatalf("screenshot %s: %v (%d bytes)", shot, err, info.Size())
	}
	t.Logf("screenshot: %s (%d bytes)", shot, info.Size())
}

func (f *farm) web() string { return "http://" + f.srv.webLn.Addr().String() }
