package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const promPage = `# HELP ws_connections Open WebSocket connections.
# TYPE ws_connections gauge
ws_connections{worker="0"} 120
ws_connections{worker="1",path="/a b}\"c"} 80 1700000000000
ws_connections_total 999
# TYPE ws_accepted_total counter
ws_accepted_total{worker="0"} 5000
ws_accepted_total{worker="1"} 2500.0
other_metric 1e3
`

func TestReadCounts(t *testing.T) {
	for _, tc := range []struct {
		body, metric, accepted string
		conns, acc             int64
		err                    string
	}{
		{body: "42\n", conns: 42},
		{body: "  42.4 ", conns: 42},
		{body: promPage, metric: "ws_connections", conns: 200},
		{body: promPage, metric: "ws_connections", accepted: "ws_accepted_total", conns: 200, acc: 7500},
		{body: promPage, metric: "other_metric", conns: 1000},
		{body: "", err: "not a number"},
		{body: "-3", err: "negative"},
		{body: "NaN", err: "not a usable count"},
		{body: promPage, metric: "missing", err: `metric "missing" not found`},
		{body: promPage, metric: "ws_connections", accepted: "nope", err: `metric "nope" not found`},
		{body: "ws_connections{a=\"1\" 3\n", metric: "ws_connections", err: "unterminated label set"},
		{body: "ws_connections abc\n", metric: "ws_connections", err: "bad value"},
	} {
		var est gaugeAccepted
		conns, acc, err := readCounts([]byte(tc.body), tc.metric, tc.accepted, &est)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q/%s: err %v, want %q", tc.body, tc.metric, err, tc.err)
			}
			continue
		}
		if err != nil || conns != tc.conns || acc != tc.acc {
			t.Errorf("%q/%s/%s: %d %d %v, want %d %d", tc.body, tc.metric, tc.accepted, conns, acc, err, tc.conns, tc.acc)
		}
	}
}

func TestGaugeAccepted(t *testing.T) {
	var g gaugeAccepted
	var got []int64
	for _, c := range []int64{10, 15, 12, 20, 0, 3} {
		got = append(got, g.add(c))
	}
	want := []int64{0, 5, 5, 13, 13, 16}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("accepted %v, want %v", got, want)
		}
	}
}

func TestHTTPSource(t *testing.T) {
	var n atomic.Int64
	n.Store(7)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/n":
			w.Write([]byte(strings.Repeat(" ", 3) + strconv.FormatInt(n.Load(), 10) + "\n"))
		case "/metrics":
			w.Write([]byte(promPage))
		default:
			http.Error(w, "no", http.StatusNotFound)
		}
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	src, err := newSource(&settings{httpSrc: &HTTPCountConfig{URL: srv.URL + "/n", Timeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if c, a, err := src.count(ctx); err != nil || c != 7 || a != 0 {
		t.Fatalf("plain: %d %d %v", c, a, err)
	}
	n.Store(10)
	if c, a, err := src.count(ctx); err != nil || c != 10 || a != 3 {
		t.Fatalf("plain, grown: %d %d %v", c, a, err)
	}

	src, _ = newSource(&settings{httpSrc: &HTTPCountConfig{URL: srv.URL + "/metrics", Metric: "ws_connections", AcceptedMetric: "ws_accepted_total", Timeout: time.Second}})
	if c, a, err := src.count(ctx); err != nil || c != 200 || a != 7500 {
		t.Fatalf("prometheus: %d %d %v", c, a, err)
	}

	src, _ = newSource(&settings{httpSrc: &HTTPCountConfig{URL: srv.URL + "/gone", Timeout: time.Second}})
	if _, _, err := src.count(ctx); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("404: %v", err)
	}
}

func TestFileSource(t *testing.T) {
	p := filepath.Join(t.TempDir(), "conns")
	src, err := newSource(&settings{fileSrc: &FileCountConfig{Path: p}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := src.count(context.Background()); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("missing file: %v", err)
	}
	if err := os.WriteFile(p, []byte("1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, _, err := src.count(context.Background()); err != nil || c != 1234 {
		t.Fatalf("file: %d %v", c, err)
	}
}
