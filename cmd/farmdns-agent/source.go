package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/farmdns/farmdns/cmd/farmdns-agent/conncount"
)

// source produces the connection count. Implementations: sockets (the
// kernel's view of the listed ports), an HTTP endpoint of the application,
// or a file.
type source interface {
	// count returns the connections open now and the connections accepted
	// since the agent started.
	count(ctx context.Context) (conns, accepted int64, err error)
	// name describes the source for logs and metrics ("netlink", "http", ...).
	name() string
	close() error
}

// newSource builds the source the settings ask for. Opening a socket source
// probes the kernel, so a missing netlink is found (and /proc chosen) here.
func newSource(s *settings) (source, error) {
	switch {
	case s.httpSrc != nil:
		return &httpSource{cfg: *s.httpSrc, client: &http.Client{Timeout: s.httpSrc.Timeout}}, nil
	case s.fileSrc != nil:
		return &fileSource{cfg: *s.fileSrc}, nil
	}
	c, err := conncount.New(s.ports, s.method)
	if err != nil {
		return nil, fmt.Errorf("count.ports: %w", err)
	}
	return &socketSource{c: c}, nil
}

type socketSource struct{ c *conncount.Counter }

func (s *socketSource) count(context.Context) (int64, int64, error) {
	r, err := s.c.Count()
	return r.Established, r.Accepted, err
}

func (s *socketSource) name() string { return string(s.c.Method()) }
func (s *socketSource) close() error { return s.c.Close() }

// gaugeAccepted estimates accepted connections from a gauge of open ones when
// the application gives no counter: the sum of the increases between
// samples. It is a lower bound (a connection that replaces one that closed
// within the same interval is not seen).
type gaugeAccepted struct {
	seen     bool
	last     int64
	accepted int64
}

func (g *gaugeAccepted) add(conns int64) int64 {
	if g.seen && conns > g.last {
		g.accepted += conns - g.last
	}
	g.seen, g.last = true, conns
	return g.accepted
}

// maxBody bounds what is read from the application: a metrics page with
// tens of thousands of series is a few megabytes.
const maxBody = 16 << 20

type httpSource struct {
	cfg    HTTPCountConfig
	client *http.Client
	est    gaugeAccepted
}

func (s *httpSource) name() string { return "http" }
func (s *httpSource) close() error { s.client.CloseIdleConnections(); return nil }

func (s *httpSource) count(ctx context.Context) (int64, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.cfg.URL, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("count.http: %w", err)
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("count.http: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return 0, 0, fmt.Errorf("count.http: read %s: %w", s.cfg.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("count.http: %s: %s", s.cfg.URL, resp.Status)
	}
	if len(body) > maxBody {
		return 0, 0, fmt.Errorf("count.http: %s: body larger than %d bytes", s.cfg.URL, maxBody)
	}
	conns, acc, err := readCounts(body, s.cfg.Metric, s.cfg.AcceptedMetric, &s.est)
	if err != nil {
		return 0, 0, fmt.Errorf("count.http: %s: %w", s.cfg.URL, err)
	}
	return conns, acc, nil
}

type fileSource struct {
	cfg FileCountConfig
	est gaugeAccepted
}

func (s *fileSource) name() string { return "file" }
func (s *fileSource) close() error { return nil }

func (s *fileSource) count(context.Context) (int64, int64, error) {
	f, err := os.Open(s.cfg.Path)
	if err != nil {
		return 0, 0, fmt.Errorf("count.file: %w", err)
	}
	defer f.Close()
	body, err := io.ReadAll(io.LimitReader(f, maxBody+1))
	if err != nil {
		return 0, 0, fmt.Errorf("count.file: read %s: %w", s.cfg.Path, err)
	}
	if len(body) > maxBody {
		return 0, 0, fmt.Errorf("count.file: %s: larger than %d bytes", s.cfg.Path, maxBody)
	}
	conns, acc, err := readCounts(body, s.cfg.Metric, s.cfg.AcceptedMetric, &s.est)
	if err != nil {
		return 0, 0, fmt.Errorf("count.file: %s: %w", s.cfg.Path, err)
	}
	return conns, acc, nil
}

// readCounts extracts the connection count from body: a plain number when
// metric is empty, else the sum of the named metric's series in Prometheus
// text format. accepted comes from acceptedMetric when given, else from est.
func readCounts(body []byte, metric, acceptedMetric string, est *gaugeAccepted) (conns, accepted int64, err error) {
	if metric == "" {
		conns, err = toCount(strings.TrimSpace(string(body)))
		if err != nil {
			return 0, 0, err
		}
		return conns, est.add(conns), nil
	}
	vals, err := promValues(body, metric, acceptedMetric)
	if err != nil {
		return 0, 0, err
	}
	v, ok := vals[metric]
	if !ok {
		return 0, 0, fmt.Errorf("metric %q not found", metric)
	}
	if conns, err = floatCount(v); err != nil {
		return 0, 0, fmt.Errorf("metric %q: %w", metric, err)
	}
	if acceptedMetric == "" {
		return conns, est.add(conns), nil
	}
	a, ok := vals[acceptedMetric]
	if !ok {
		return 0, 0, fmt.Errorf("metric %q not found", acceptedMetric)
	}
	if accepted, err = floatCount(a); err != nil {
		return 0, 0, fmt.Errorf("metric %q: %w", acceptedMetric, err)
	}
	return conns, accepted, nil
}

func toCount(s string) (int64, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("count %d is negative", n)
		}
		return n, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		if len(s) > 40 {
			s = s[:40] + "..."
		}
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return floatCount(f)
}

func floatCount(f float64) (int64, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1<<53 {
		return 0, fmt.Errorf("value %v is not a usable count", f)
	}
	return int64(math.Round(f)), nil
}

// promValues sums, per wanted metric name, the sample values of a Prometheus
// text exposition (version 0.0.4; OpenMetrics text parses the same way for
// gauges and counters). Comments and other metrics are skipped.
func promValues(body []byte, names ...string) (map[string]float64, error) {
	want := map[string]bool{}
	for _, n := range names {
		if n != "" {
			want[n] = true
		}
	}
	out := map[string]float64{}
	for lineNo := 1; len(body) > 0; lineNo++ {
		var line []byte
		line, body, _ = bytes.Cut(body, []byte{'\n'})
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		name, rest, err := splitSample(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", lineNo, err)
		}
		if !want[name] {
			continue
		}
		// rest is "value [timestamp]".
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("line %d: %s has no value", lineNo, name)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %s: bad value %q", lineNo, name, fields[0])
		}
		out[name] += v
	}
	return out, nil
}

// splitSample splits `name{labels} value ts` into the name and what follows
// the labels. Label values are quoted and may contain '}' and escaped quotes.
func splitSample(line []byte) (string, string, error) {
	i := bytes.IndexAny(line, "{ \t")
	if i < 0 {
		return "", "", errors.New("sample without a value")
	}
	name := string(line[:i])
	if line[i] != '{' {
		return name, string(line[i:]), nil
	}
	inQuote := false
	for j := i + 1; j < len(line); j++ {
		switch c := line[j]; {
		case inQuote && c == '\\':
			j++ // skip the escaped character
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '}':
			return name, string(line[j+1:]), nil
		}
	}
	return "", "", fmt.Errorf("%s: unterminated label set", name)
}
