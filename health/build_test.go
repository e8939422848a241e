package health

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"gopkg.in/yaml.v3"
)

// countingHandler counts log records by level and keeps their messages.
type countingHandler struct {
	mu   sync.Mutex
	msgs []string
	warn int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r.Level >= slog.LevelWarn {
		h.warn++
	}
	h.msgs = append(h.msgs, r.Message)
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }
func (h *countingHandler) warnings() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.warn
}

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

func entry(node, nodeAddr, id, addr string, port int, meta map[string]string, checks ...*api.HealthCheck) *api.ServiceEntry {
	return &api.ServiceEntry{
		Node:    &api.Node{Node: node, Address: nodeAddr},
		Service: &api.AgentService{ID: id, Service: "web", Address: addr, Port: port, Meta: meta},
		Checks:  checks,
	}
}

func check(id, status string) *api.HealthCheck { return &api.HealthCheck{CheckID: id, Status: status} }

func report(conns, accepted, capacity int64, updated time.Time) []byte {
	return fmt.Appendf(nil, `{"connections":%d,"accepted":%d,"capacity":%d,"updated":%q}`,
		conns, accepted, capacity, updated.Format(time.RFC3339Nano))
}

func newTestBuilder(t *testing.T, services ...ServiceConfig) (*builder, *countingHandler) {
	t.Helper()
	cfg, err := WatcherConfig{Services: services}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	h := &countingHandler{}
	return newBuilder(&cfg, slog.New(h)), h
}

func TestAggregateChecks(t *testing.T) {
	for _, tc := range []struct {
		name     string
		checks   api.HealthChecks
		health   HealthState
		draining bool
	}{
		{"no checks", nil, HealthPassing, false},
		{"all passing", api.HealthChecks{check("serfHealth", "passing"), check("service:a", "passing")}, HealthPassing, false},
		{"warning", api.HealthChecks{check("serfHealth", "passing"), check("service:a", "warning")}, HealthWarning, false},
		{"node critical", api.HealthChecks{check("serfHealth", "critical"), check("service:a", "passing")}, HealthCritical, false},
		{"critical beats warning", api.HealthChecks{check("x", "warning"), check("y", "critical")}, HealthCritical, false},
		{"unknown status fails safe", api.HealthChecks{check("x", "bogus")}, HealthCritical, false},
		{"node maintenance", api.HealthChecks{check("_node_maintenance", "critical"), check("service:a", "passing")}, HealthPassing, true},
		{"service maintenance", api.HealthChecks{check("_service_maintenance:a", "critical")}, HealthPassing, true},
		{"other service's maintenance is just a check", api.HealthChecks{check("_service_maintenance:b", "critical")}, HealthCritical, false},
		{"draining and critical", api.HealthChecks{check("_node_maintenance", "critical"), check("service:a", "critical")}, HealthCritical, true},
		{"nil check ignored", api.HealthChecks{nil, check("x", "passing")}, HealthPassing, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, d := aggregateChecks(tc.checks, "a")
			if h != tc.health || d != tc.draining {
				t.Errorf("got %v draining=%v, want %v draining=%v", h, d, tc.health, tc.draining)
			}
		})
	}
}

func TestBuildTargets(t *testing.T) {
	b, logs := newTestBuilder(t, ServiceConfig{Name: "web", DefaultCapacity: 500}, ServiceConfig{Name: "empty"})
	b.instances["web"] = instancesFromEntries([]*api.ServiceEntry{
		entry("n2", "10.0.0.2", "web-b", "", 81, nil, check("service:web-b", "warning")),
		entry("n1", "10.0.0.1", "web-z", "2001:db8::1", 80, nil),
		entry("n1", "10.0.0.1", "web-a", "::ffff:192.0.2.7", 80, nil),
		entry("n3", "10.0.0.3", "web-c", "host.example", 80, nil), // not an IP: left out
		nil,
	}, "farmdns/load", "web")
	s, _ := b.build(1, t0)
	if s.Generation() != 1 || !s.Built().Equal(t0) {
		t.Errorf("generation %d built %v", s.Generation(), s.Built())
	}
	if got := s.Pool("nope"); got != nil {
		t.Errorf("unwatched service has a pool: %v", got)
	}
	if e := s.Pool("empty"); e == nil || e.Synced() || len(e.Targets()) != 0 {
		t.Errorf("pool of a service Consul has not answered for: %+v", e)
	}
	p := s.Pool("web")
	var got []string
	for _, tg := range p.Targets() {
		got = append(got, fmt.Sprintf("%s/%s %s", tg.Node, tg.ServiceID, netip.AddrPortFrom(tg.Address, tg.Port)))
	}
	want := []string{"n1/web-a 192.0.2.7:80", "n1/web-z [2001:db8::1]:80", "n2/web-b 10.0.0.2:81"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("targets (sorted by node, then ID; address falling back to the node's):\n got %v\nwant %v", got, want)
	}
	c := p.Counts()
	if c.Targets != 3 || c.InvalidAddress != 1 || c.Warning != 1 || c.Passing != 2 || c.LoadUnknown != 3 {
		t.Errorf("counts %+v", c)
	}
	if tg := p.Targets()[0]; tg.Load.Capacity != 500 || tg.Load.State != LoadUnknown || !tg.Eligible() {
		t.Errorf("default capacity / unknown load / eligibility: %+v", tg)
	}
	if b.invalidAddressTotal != 1 || logs.warnings() != 1 {
		t.Fatalf("invalid address: counted %d, logged %d; want 1, 1", b.invalidAddressTotal, logs.warnings())
	}
	// The same bad address is not logged or counted again on the next build...
	b.build(2, t0)
	if b.invalidAddressTotal != 1 || logs.warnings() != 1 {
		t.Errorf("repeat build: counted %d, logged %d; want 1, 1", b.invalidAddressTotal, logs.warnings())
	}
	// ...but a change to it is.
	b.instances["web"][3].addr = "other.example"
	b.build(3, t0)
	if b.invalidAddressTotal != 2 || logs.warnings() != 2 {
		t.Errorf("changed bad address: counted %d, logged %d; want 2, 2", b.invalidAddressTotal, logs.warnings())
	}
}

func TestBuildLoads(t *testing.T) {
	fresh := t0.Add(-5 * time.Second)
	old := t0.Add(-31 * time.Second)
	b, logs := newTestBuilder(t, ServiceConfig{Name: "web", DefaultCapacity: 100})
	b.instances["web"] = instancesFromEntries([]*api.ServiceEntry{
		entry("n01", "10.0.0.1", "kv", "", 80, map[string]string{"connections": "7", "capacity": "9"}),
		entry("n02", "10.0.0.2", "kv-nocap", "", 80, map[string]string{"capacity": "300"}),
		entry("n03", "10.0.0.3", "kv-nocap-nometa", "", 80, nil),
		entry("n04", "10.0.0.4", "meta", "", 80, map[string]string{"connections": " 40 ", "capacity": "400"}),
		entry("n05", "10.0.0.5", "meta-nocap", "", 80, map[string]string{"connections": "50"}),
		entry("n06", "10.0.0.6", "stale", "", 80, nil),
		entry("n07", "10.0.0.7", "future", "", 80, nil),
		entry("n08", "10.0.0.8", "kv-bad", "", 80, map[string]string{"connections": "3"}),
		entry("n09", "10.0.0.9", "meta-bad", "", 80, map[string]string{"connections": "lots"}),
		entry("n10", "10.0.0.10", "meta-neg", "", 80, map[string]string{"connections": "-1"}),
		entry("n11", "10.0.0.11", "meta-badcap", "", 80, map[string]string{"connections": "5", "capacity": "x"}),
		entry("n12", "10.0.0.12", "none", "", 80, nil),
	}, "farmdns/load", "web")
	b.setKV(kvFromPairs(api.KVPairs{
		{Key: "farmdns/load/web/n01/kv", Value: report(10, 1000, 2000, fresh)},
		{Key: "farmdns/load/web/n02/kv-nocap", Value: report(20, 1, 0, fresh)},
		{Key: "farmdns/load/web/n03/kv-nocap-nometa", Value: report(30, 1, 0, fresh)},
		{Key: "farmdns/load/web/n06/stale", Value: report(60, 6, 0, old)},
		{Key: "farmdns/load/web/n07/future", Value: report(70, 7, 0, t0.Add(time.Minute))},
		{Key: "farmdns/load/web/n08/kv-bad", Value: []byte(`{"connections": "many"}`)},
		{Key: "farmdns/load/web/gone/x", Value: report(1, 1, 0, fresh)},   // no such instance
		{Key: "farmdns/load/other/n01/kv", Value: report(1, 1, 0, fresh)}, // unwatched service
		{Key: "farmdns/load/web/", Value: nil},                            // folder marker
	}))
	if b.malformedTotal != 1 || logs.warnings() != 1 {
		t.Fatalf("malformed KV: counted %d, logged %d; want 1, 1", b.malformedTotal, logs.warnings())
	}
	s, nextStale := b.build(1, t0)
	p := s.Pool("web")
	want := map[string]Load{
		"kv":              {State: LoadKnown, Source: SourceKV, Connections: 10, Accepted: 1000, Capacity: 2000, Updated: fresh},
		"kv-nocap":        {State: LoadKnown, Source: SourceKV, Connections: 20, Accepted: 1, Capacity: 300, Updated: fresh},
		"kv-nocap-nometa": {State: LoadKnown, Source: SourceKV, Connections: 30, Accepted: 1, Capacity: 100, Updated: fresh},
		"meta":            {State: LoadKnown, Source: SourceMeta, Connections: 40, Capacity: 400},
		"meta-nocap":      {State: LoadKnown, Source: SourceMeta, Connections: 50, Capacity: 100},
		"stale":           {State: LoadStale, Source: SourceKV, Connections: 60, Accepted: 6, Capacity: 100, Updated: old},
		"future":          {State: LoadKnown, Source: SourceKV, Connections: 70, Accepted: 7, Capacity: 100, Updated: t0.Add(time.Minute)},
		"kv-bad":          {State: LoadMalformed, Source: SourceKV, Capacity: 100},
		"meta-bad":        {State: LoadMalformed, Source: SourceMeta, Capacity: 100},
		"meta-neg":        {State: LoadMalformed, Source: SourceMeta, Capacity: 100},
		"meta-badcap":     {State: LoadMalformed, Source: SourceMeta, Capacity: 100},
		"none":            {State: LoadUnknown, Capacity: 100},
	}
	if len(p.Targets()) != len(want) {
		t.Fatalf("%d targets, want %d: a bad load must never drop a target", len(p.Targets()), len(want))
	}
	for _, tg := range p.Targets() {
		if !tg.Load.Updated.Equal(want[tg.ServiceID].Updated) {
			t.Errorf("%s: updated %v, want %v", tg.ServiceID, tg.Load.Updated, want[tg.ServiceID].Updated)
		}
		tg.Load.Updated = want[tg.ServiceID].Updated // compare the rest with ==
		if tg.Load != want[tg.ServiceID] {
			t.Errorf("%s:\n got %+v\nwant %+v", tg.ServiceID, tg.Load, want[tg.ServiceID])
		}
	}
	if s.UnmatchedReports() != 2 {
		t.Errorf("unmatched reports %d, want 2", s.UnmatchedReports())
	}
	c := p.Counts()
	if c.LoadKnown != 6 || c.LoadStale != 1 || c.LoadMalformed != 4 || c.LoadUnknown != 1 {
		t.Errorf("counts %+v", c)
	}
	// 1 KV + 3 meta (bad, negative, bad capacity).
	if b.malformedTotal != 4 || logs.warnings() != 4 {
		t.Errorf("malformed: counted %d, logged %d; want 4, 4", b.malformedTotal, logs.warnings())
	}
	if want := fresh.Add(DefaultMaxReportAge); !nextStale.Equal(want) {
		t.Errorf("next stale at %v, want %v", nextStale, want)
	}
	mean, ok := p.MeanConnections()
	if wantMean := (10 + 20 + 30 + 40 + 50 + 70) / 6.0; !ok || mean != wantMean {
		t.Errorf("mean %v %v, want %v", mean, ok, wantMean)
	}
	for _, tg := range p.Targets() {
		n, est := p.Connections(&tg)
		switch tg.ServiceID {
		case "kv":
			if n != 10 || est {
				t.Errorf("known load: %d estimated=%v", n, est)
			}
		case "stale", "kv-bad", "none":
			if n != 37 || !est {
				t.Errorf("%s: %d estimated=%v, want the pool mean 37", tg.ServiceID, n, est)
			}
		}
	}

	// Repeated builds and an unchanged KV list log nothing new.
	b.setKV(kvFromPairs(api.KVPairs{{Key: "farmdns/load/web/n08/kv-bad", Value: []byte(`{"connections": "many"}`)}}))
	b.build(2, t0)
	if b.malformedTotal != 4 || logs.warnings() != 4 {
		t.Errorf("unchanged bad values were logged again: counted %d, logged %d", b.malformedTotal, logs.warnings())
	}
	// A changed bad KV value is logged and counted once more.
	b.setKV(kvFromPairs(api.KVPairs{{Key: "farmdns/load/web/n08/kv-bad", Value: []byte(`not json`)}}))
	if b.malformedTotal != 5 {
		t.Errorf("changed bad KV value: counted %d, want 5", b.malformedTotal)
	}

	// Time passing alone turns a fresh report stale.
	s, _ = b.build(3, fresh.Add(DefaultMaxReportAge+time.Millisecond))
	for _, tg := range s.Pool("web").Targets() {
		if tg.ServiceID == "meta" && tg.Load.State != LoadKnown {
			t.Errorf("meta loads carry no time and never go stale: %v", tg.Load.State)
		}
	}
}

func TestSnapshotContentAndSuperseded(t *testing.T) {
	b, _ := newTestBuilder(t, ServiceConfig{Name: "web"})
	b.instances["web"] = instancesFromEntries([]*api.ServiceEntry{entry("n1", "10.0.0.1", "a", "", 80, map[string]string{"k": "v"})}, "farmdns/load", "web")
	s1, _ := b.build(1, t0)
	s2, _ := b.build(2, t0.Add(time.Second))
	if !s1.sameContent(s2) {
		t.Error("identical builds differ")
	}
	b.instances["web"] = instancesFromEntries([]*api.ServiceEntry{entry("n1", "10.0.0.1", "a", "", 80, map[string]string{"k": "w"})}, "farmdns/load", "web")
	s3, _ := b.build(3, t0)
	if s1.sameContent(s3) {
		t.Error("a meta change went unnoticed")
	}
	select {
	case <-s1.Superseded():
		t.Error("fresh snapshot already superseded")
	default:
	}
}

func TestNextIndex(t *testing.T) {
	for _, tc := range []struct{ waited, got, want uint64 }{
		{0, 10, 10},
		{10, 10, 10}, // timeout, nothing new
		{10, 12, 12},
		{10, 3, 0}, // backwards: resync with a non-blocking read
		{0, 0, 1},  // never wait on 0 twice in a row
		{1, 1, 1},
		{5, 0, 0},
	} {
		if got := nextIndex(tc.waited, tc.got); got != tc.want {
			t.Errorf("nextIndex(%d, %d) = %d, want %d", tc.waited, tc.got, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	for n := 1; n < 100; n++ {
		d := backoff(n)
		hi := min(maxBackoff, minBackoff<<min(n-1, 15))
		if d < hi/2 || d > hi {
			t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, d, hi/2, hi)
		}
	}
}

func TestWatcherConfig(t *testing.T) {
	c, err := WatcherConfig{Services: []ServiceConfig{{Name: "web"}}, LoadPrefix: "/farm/load/"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.LoadPrefix != "farm/load" || c.MaxReportAge != 30*time.Second || c.MaxStaleness != 5*time.Minute ||
		c.WaitTime != time.Minute || c.MinInterval != 100*time.Millisecond {
		t.Errorf("defaults: %+v", c)
	}
	c, err = WatcherConfig{MaxStaleness: 2 * time.Second}.withDefaults()
	if err != nil || c.WaitTime != 500*time.Millisecond {
		t.Errorf("wait time follows a short max staleness: %v %v", c.WaitTime, err)
	}
	for _, tc := range []struct {
		cfg  WatcherConfig
		want string
	}{
		{WatcherConfig{Services: []ServiceConfig{{}}}, "services[0].name: empty"},
		{WatcherConfig{Services: []ServiceConfig{{Name: "a"}, {Name: "a"}}}, `services[1].name: "a" listed twice`},
		{WatcherConfig{Services: []ServiceConfig{{Name: "a/b"}}}, "services[0].name: "},
		{WatcherConfig{Services: []ServiceConfig{{Name: "a", DefaultCapacity: -1}}}, "services[0].default_capacity: -1 is negative"},
		{WatcherConfig{LoadPrefix: "/"}, "load_prefix: "},
		{WatcherConfig{MaxReportAge: -time.Second}, "max_report_age: "},
		{WatcherConfig{MaxStaleness: time.Minute, WaitTime: time.Minute}, "wait_time: "},
	} {
		_, err := NewWatcher(tc.cfg, &api.Client{}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error containing %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := NewWatcher(WatcherConfig{}, nil, nil); err == nil {
		t.Error("nil client accepted")
	}
}

func TestStatusReady(t *testing.T) {
	var s Status
	if ok, why := s.Ready(t0); ok || !strings.Contains(why, "not running") {
		t.Errorf("not started: %v %q", ok, why)
	}
	s = Status{Started: t0, MaxStaleness: time.Minute, DataSets: []DataSetStatus{
		{Kind: DataSetKV, Name: "farmdns/load"}, {Kind: DataSetService, Name: "web"},
	}}
	// Never synced: ready during the grace period after the start, then not.
	if ok, _ := s.Ready(t0.Add(59 * time.Second)); !ok || s.Synced() {
		t.Error("start-up without Consul must not be unready at once")
	}
	s.DataSets[1].LastError = fmt.Errorf("connection refused")
	if ok, why := s.Ready(t0.Add(61 * time.Second)); ok || !strings.Contains(why, "service web") || !strings.Contains(why, "connection refused") {
		t.Errorf("never synced after max staleness: %v %q", ok, why)
	}
	s.DataSets[0].LastSuccess = t0.Add(time.Minute)
	s.DataSets[1].LastSuccess = t0.Add(time.Minute)
	if ok, why := s.Ready(t0.Add(90 * time.Second)); !ok || !s.Synced() {
		t.Errorf("synced: %v %q", ok, why)
	}
	if ok, why := s.Ready(t0.Add(121 * time.Second)); ok || !strings.Contains(why, "kv farmdns/load") {
		t.Errorf("stale: %v %q", ok, why)
	}
}

func TestEmptyWatcher(t *testing.T) {
	w, err := NewWatcher(WatcherConfig{Services: []ServiceConfig{{Name: "b"}, {Name: "a"}}}, &api.Client{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := w.Snapshot()
	if s.Generation() != 0 || len(s.Pools()) != 2 || s.Pools()[0].Name() != "a" || s.Pool("b") == nil {
		t.Errorf("initial snapshot: gen %d pools %d", s.Generation(), len(s.Pools()))
	}
	st := w.Status()
	if len(st.DataSets) != 3 || st.DataSets[0].Kind != DataSetKV || st.DataSets[1].Name != "a" {
		t.Errorf("data sets %+v", st.DataSets)
	}
	if ok, _ := w.Ready(); ok {
		t.Error("a watcher that is not running is ready")
	}
}

// BenchmarkBuild measures the watcher's own work per KV change at scale: the
// reparse of a changed tenth of the reports and a full snapshot build and
// comparison. Decoding Consul's JSON (done by the API client) is not included.
func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{5000, 50000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			cfg, _ := WatcherConfig{Services: []ServiceConfig{{Name: "big"}}}.withDefaults()
			bl := newBuilder(&cfg, slog.New(slog.DiscardHandler))
			entries := make([]*api.ServiceEntry, n)
			pairs := make(api.KVPairs, n)
			now := time.Now()
			for i := range n {
				node, id := fmt.Sprintf("n%05d", i/5), fmt.Sprintf("big-%05d", i)
				entries[i] = entry(node, fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255), id, "", 80, map[string]string{"rack": "r1"})
				pairs[i] = &api.KVPair{Key: LoadKey("farmdns/load", "big", node, id), Value: report(int64(i%1000), int64(i), 20000, now)}
			}
			bl.instances["big"] = instancesFromEntries(entries, "farmdns/load", "big")
			bl.setKV(kvFromPairs(pairs))
			prev, _ := bl.build(1, now)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				for j := i % 10; j < n; j += 10 { // a tenth of the loads change
					pairs[j] = &api.KVPair{Key: pairs[j].Key, Value: report(int64(i), int64(i), 20000, now)}
				}
				bl.setKV(kvFromPairs(pairs))
				s, _ := bl.build(uint64(i+2), now)
				if s.sameContent(prev) {
					b.Fatal("no change seen")
				}
				prev = s
			}
		})
	}
}

func TestWatcherConfigYAML(t *testing.T) {
	src := `
services:
  - name: web
    default_capacity: 20000
  - name: mail
load_prefix: farm/load
max_report_age: 45s
max_staleness: 10m
`
	var c WatcherConfig
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if len(c.Services) != 2 || c.Services[0] != (ServiceConfig{Name: "web", DefaultCapacity: 20000}) ||
		c.LoadPrefix != "farm/load" || c.MaxReportAge != 45*time.Second || c.MaxStaleness != 10*time.Minute {
		t.Errorf("decoded %+v", c)
	}
}
