package health_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// TestWatcher runs the behaviours that can share one Consul agent; each
// subtest has its own service name, KV prefix and watcher.
func TestWatcher(t *testing.T) {
	a := consultest.Start(t)
	watch := func(t *testing.T, service string, defaultCapacity int64) (*health.Watcher, string) {
		t.Helper()
		prefix := "farmdns/test-" + service
		w := startWatcher(t, a.Client, health.WatcherConfig{
			Services:   []health.ServiceConfig{{Name: service, DefaultCapacity: defaultCapacity}},
			LoadPrefix: prefix,
		})
		return w, prefix
	}

	t.Run("HealthFlips", func(t *testing.T) {
		t.Parallel()
		w, _ := watch(t, "flip", 0)
		in := consultest.Instance{Node: "flip-n1", NodeAddress: "127.0.0.11", Service: "flip", ID: "flip-1", Port: 8080}
		a.Register(t, in)
		s := waitSnapshot(t, w, "instance registered passing", targetIs("flip", "flip-1", func(t *health.Target) bool {
			return t.Health == health.HealthPassing && t.Eligible()
		}))
		if !s.Pool("flip").Synced() {
			t.Error("pool not marked synced")
		}
		check := consultest.ServiceCheckID("flip-1")
		a.SetCheck(t, "flip-n1", "flip-1", check, api.HealthCritical)
		waitSnapshot(t, w, "service check critical", targetIs("flip", "flip-1", func(t *health.Target) bool {
			return t.Health == health.HealthCritical && !t.Eligible()
		}))
		a.SetCheck(t, "flip-n1", "flip-1", check, api.HealthPassing)
		waitSnapshot(t, w, "service check passing again", targetIs("flip", "flip-1", func(t *health.Target) bool {
			return t.Health == health.HealthPassing
		}))
		a.SetCheck(t, "flip-n1", "flip-1", check, api.HealthWarning)
		waitSnapshot(t, w, "warning is healthy but reported", targetIs("flip", "flip-1", func(t *health.Target) bool {
			return t.Health == health.HealthWarning && t.Eligible()
		}))
		// A node check applies to every service on the node.
		a.SetCheck(t, "flip-n1", "", "node-alive", api.HealthCritical)
		waitSnapshot(t, w, "node check critical", targetIs("flip", "flip-1", func(t *health.Target) bool {
			return t.Health == health.HealthCritical
		}))
		a.SetCheck(t, "flip-n1", "", "node-alive", api.HealthPassing)
		a.SetCheck(t, "flip-n1", "flip-1", check, api.HealthPassing)
		waitSnapshot(t, w, "all passing", targetIs("flip", "flip-1", func(t *health.Target) bool {
			return t.Health == health.HealthPassing
		}))
	})

	t.Run("Maintenance", func(t *testing.T) {
		t.Parallel()
		w, _ := watch(t, "maint", 0)
		// The agent's own node, through the agent API: the real maintenance
		// commands, which create Consul's own check IDs.
		if err := a.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "maint-local", Name: "maint", Port: 9000}); err != nil {
			t.Fatal(err)
		}
		waitSnapshot(t, w, "local instance present", targetIs("maint", "maint-local", func(t *health.Target) bool {
			return !t.Draining && t.Address == netip.MustParseAddr("127.0.0.1")
		}))
		if err := a.Client.Agent().EnableServiceMaintenance("maint-local", "test"); err != nil {
			t.Fatal(err)
		}
		s := waitSnapshot(t, w, "service maintenance drains", targetIs("maint", "maint-local", func(t *health.Target) bool {
			return t.Draining && !t.Eligible() && t.Health == health.HealthPassing
		}))
		if c := s.Pool("maint").Counts(); c.Draining != 1 {
			t.Errorf("draining count %d", c.Draining)
		}
		if err := a.Client.Agent().DisableServiceMaintenance("maint-local"); err != nil {
			t.Fatal(err)
		}
		waitSnapshot(t, w, "service maintenance off", targetIs("maint", "maint-local", func(t *health.Target) bool { return !t.Draining }))
		if err := a.Client.Agent().EnableNodeMaintenance("test"); err != nil {
			t.Fatal(err)
		}
		waitSnapshot(t, w, "node maintenance drains", targetIs("maint", "maint-local", func(t *health.Target) bool { return t.Draining }))
		if err := a.Client.Agent().DisableNodeMaintenance(); err != nil {
			t.Fatal(err)
		}
		waitSnapshot(t, w, "node maintenance off", targetIs("maint", "maint-local", func(t *health.Target) bool { return !t.Draining }))

		// A catalog node carrying the node maintenance check drains too, and
		// its reported connections still count.
		in := consultest.Instance{Node: "maint-n2", NodeAddress: "127.0.0.12", Service: "maint", ID: "maint-2", Port: 9000}
		a.Register(t, in)
		a.PutKV(t, health.LoadKey("farmdns/test-maint", "maint", "maint-n2", "maint-2"), reportJSON(77, 1, 0, time.Now()))
		a.SetCheck(t, "maint-n2", "", "_node_maintenance", api.HealthCritical)
		s = waitSnapshot(t, w, "catalog node maintenance drains", targetIs("maint", "maint-2", func(t *health.Target) bool {
			return t.Draining && t.Load.Known() && t.Load.Connections == 77
		}))
		if mean, ok := s.Pool("maint").MeanConnections(); !ok || mean != 77 {
			t.Errorf("a draining target's connections must still count: mean %v %v", mean, ok)
		}
		a.RemoveCheck(t, "maint-n2", "_node_maintenance")
		waitSnapshot(t, w, "catalog node maintenance off", targetIs("maint", "maint-2", func(t *health.Target) bool { return !t.Draining }))
	})

	t.Run("AddRemove", func(t *testing.T) {
		t.Parallel()
		w, _ := watch(t, "churn", 0)
		for i, addr := range []string{"127.0.0.21", "127.0.0.22", "127.0.0.23"} {
			a.Register(t, consultest.Instance{Node: "churn-n" + string(rune('1'+i)), NodeAddress: addr, Service: "churn", ID: "churn-" + string(rune('a'+i)), Port: 53})
		}
		s := waitSnapshot(t, w, "three instances", func(s *health.Snapshot) bool { return len(s.Pool("churn").Targets()) == 3 })
		var ids []string
		for _, tg := range s.Pool("churn").Targets() {
			ids = append(ids, tg.Node+"/"+tg.ServiceID)
		}
		if got := strings.Join(ids, ","); got != "churn-n1/churn-a,churn-n2/churn-b,churn-n3/churn-c" {
			t.Errorf("order %s", got)
		}
		gen := s.Generation()
		a.Deregister(t, "churn-n2", "churn-b")
		s = waitSnapshot(t, w, "instance removed", func(s *health.Snapshot) bool { return len(s.Pool("churn").Targets()) == 2 })
		if target(s, "churn", "churn-b") != nil || s.Generation() <= gen {
			t.Errorf("removed instance still present or generation did not grow (%d -> %d)", gen, s.Generation())
		}
		// A second instance on an existing node.
		a.Register(t, consultest.Instance{Node: "churn-n1", NodeAddress: "127.0.0.21", Service: "churn", ID: "churn-a2", Port: 54})
		waitSnapshot(t, w, "instance added", targetIs("churn", "churn-a2", func(t *health.Target) bool { return t.Port == 54 }))
		a.Deregister(t, "churn-n1", "churn-a")
		a.Deregister(t, "churn-n1", "churn-a2")
		a.Deregister(t, "churn-n3", "churn-c")
		s = waitSnapshot(t, w, "all gone: Consul says the service is empty", func(s *health.Snapshot) bool { return len(s.Pool("churn").Targets()) == 0 })
		if !s.Pool("churn").Synced() {
			t.Error("an empty pool that Consul answered for must be marked synced")
		}
	})

	t.Run("KVLoads", func(t *testing.T) {
		t.Parallel()
		w, prefix := watch(t, "kvload", 1000)
		a.Register(t, consultest.Instance{Node: "kv-n1", NodeAddress: "127.0.0.31", Service: "kvload", ID: "kv-1", Port: 80,
			Meta: map[string]string{"connections": "5"}})
		waitSnapshot(t, w, "meta load before any report", targetIs("kvload", "kv-1", func(t *health.Target) bool {
			return t.Load.Source == health.SourceMeta && t.Load.Connections == 5 && t.Load.Capacity == 1000
		}))
		now := time.Now()
		putReport(t, a, prefix, "kvload", "kv-n1", "kv-1", 120, 5000, 2000, now)
		waitSnapshot(t, w, "KV report wins over meta", targetIs("kvload", "kv-1", func(t *health.Target) bool {
			return t.Load.Source == health.SourceKV && t.Load.State == health.LoadKnown && t.Load.Connections == 120 &&
				t.Load.Accepted == 5000 && t.Load.Capacity == 2000 && t.Load.Updated.Equal(now.UTC().Truncate(0))
		}))
		putReport(t, a, prefix, "kvload", "kv-n1", "kv-1", 130, 5100, 0, time.Now())
		waitSnapshot(t, w, "load change; capacity falls back to the default", targetIs("kvload", "kv-1", func(t *health.Target) bool {
			return t.Load.Connections == 130 && t.Load.Capacity == 1000
		}))
		// A reporter restart resets accepted: carried through as reported.
		putReport(t, a, prefix, "kvload", "kv-n1", "kv-1", 3, 0, 0, time.Now())
		waitSnapshot(t, w, "accepted reset", targetIs("kvload", "kv-1", func(t *health.Target) bool {
			return t.Load.Connections == 3 && t.Load.Accepted == 0
		}))
		a.DeleteKV(t, health.LoadKey(prefix, "kvload", "kv-n1", "kv-1"))
		waitSnapshot(t, w, "report deleted: back to meta", targetIs("kvload", "kv-1", func(t *health.Target) bool {
			return t.Load.Source == health.SourceMeta && t.Load.Connections == 5
		}))
		// A report for an instance that does not exist is ignored and counted.
		putReport(t, a, prefix, "kvload", "kv-nowhere", "kv-9", 1, 1, 0, time.Now())
		s := waitSnapshot(t, w, "unmatched report counted", func(s *health.Snapshot) bool { return s.UnmatchedReports() == 1 })
		if n := len(s.Pool("kvload").Targets()); n != 1 {
			t.Errorf("unmatched report changed the pool: %d targets", n)
		}
	})

	t.Run("Metrics", func(t *testing.T) {
		t.Parallel()
		w, prefix := watch(t, "metrics", 0)
		a.Register(t, consultest.Instance{Node: "m-n1", NodeAddress: "127.0.0.35", Service: "metrics", ID: "m-1", Port: 80})
		putReport(t, a, prefix, "metrics", "m-n1", "m-1", 9, 9, 0, time.Now().Add(-2*time.Second))
		waitSnapshot(t, w, "report seen", targetIs("metrics", "m-1", func(t *health.Target) bool { return t.Load.Connections == 9 }))
		c := w.Collector()
		if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
			t.Errorf("lint: %v %v", err, problems)
		}
		want := "\n# HELP farmdns_consul_ready 1 while every data set has been read within max_staleness; 0 means the answers rest on old data.\n# TYPE farmdns_consul_ready gauge\nfarmdns_consul_ready 1\n"
		if err := testutil.CollectAndCompare(c, strings.NewReader(want), "farmdns_consul_ready"); err != nil {
			t.Error(err)
		}
		if n := testutil.CollectAndCount(c, "farmdns_consul_last_sync_timestamp_seconds"); n != 2 {
			t.Errorf("%d last-sync series, want one for the KV prefix and one for the service", n)
		}
		// The report was counted two seconds before it was written: the lag
		// histogram holds one observation of at least that.
		all := make(chan prometheus.Metric, 100)
		c.Collect(all)
		close(all)
		lags := 0
		for pm := range all {
			if !strings.Contains(pm.Desc().String(), `"farmdns_consul_propagation_lag_seconds"`) {
				continue
			}
			lags++
			var m dto.Metric
			if err := pm.Write(&m); err != nil || m.Histogram.GetSampleCount() != 1 || m.Histogram.GetSampleSum() < 2 {
				t.Errorf("lag histogram %v (%v), want one sample of at least 2 s", m.Histogram, err)
			}
		}
		if lags != 1 {
			t.Errorf("%d farmdns_consul_propagation_lag_seconds series collected, want 1", lags)
		}
	})

	t.Run("MalformedKV", func(t *testing.T) {
		t.Parallel()
		w, prefix := watch(t, "badkv", 0)
		a.Register(t, consultest.Instance{Node: "bad-n1", NodeAddress: "127.0.0.41", Service: "badkv", ID: "bad-1", Port: 80})
		a.Register(t, consultest.Instance{Node: "bad-n2", NodeAddress: "127.0.0.42", Service: "badkv", ID: "bad-2", Port: 80})
		putReport(t, a, prefix, "badkv", "bad-n2", "bad-2", 40, 1, 0, time.Now())
		waitSnapshot(t, w, "both instances, one load known", func(s *health.Snapshot) bool {
			return len(s.Pool("badkv").Targets()) == 2 && s.Pool("badkv").Counts().LoadKnown == 1
		})
		key := health.LoadKey(prefix, "badkv", "bad-n1", "bad-1")
		for i, bad := range []string{`{"connections": "many"`, `{"connections": -4, "updated": "2026-11-22T10:00:00Z"}`, ``, `{"accepted": 1}`} {
			a.PutKV(t, key, []byte(bad))
			s := waitSnapshot(t, w, "malformed report: target kept with unknown load", targetIs("badkv", "bad-1", func(t *health.Target) bool {
				return t.Load.State == health.LoadMalformed && !t.Load.Known()
			}))
			p := s.Pool("badkv")
			if len(p.Targets()) != 2 || p.Counts().LoadMalformed != 1 {
				t.Fatalf("value %q: pool %+v", bad, p.Counts())
			}
			if n, est := p.Connections(target(s, "badkv", "bad-1")); n != 40 || !est {
				t.Errorf("value %q: estimate %d %v, want the pool mean 40", bad, n, est)
			}
			waitStatus(t, w, "malformed value counted once", func(st *health.Status) bool { return st.MalformedTotal == uint64(i+1) })
		}
		// Unrelated changes rebuild the snapshot; the bad value is not counted again.
		putReport(t, a, prefix, "badkv", "bad-n2", "bad-2", 41, 2, 0, time.Now())
		waitSnapshot(t, w, "other load changed", targetIs("badkv", "bad-2", func(t *health.Target) bool { return t.Load.Connections == 41 }))
		if got := w.Status().MalformedTotal; got != 4 {
			t.Errorf("malformed total %d after an unrelated change, want 4", got)
		}
		putReport(t, a, prefix, "badkv", "bad-n1", "bad-1", 7, 7, 0, time.Now())
		waitSnapshot(t, w, "repaired report", targetIs("badkv", "bad-1", func(t *health.Target) bool { return t.Load.Known() && t.Load.Connections == 7 }))
	})

	t.Run("MetaFallback", func(t *testing.T) {
		t.Parallel()
		w, _ := watch(t, "meta", 50)
		a.Register(t, consultest.Instance{Node: "meta-n1", NodeAddress: "127.0.0.51", Service: "meta", ID: "meta-1", Port: 80,
			Meta: map[string]string{"connections": "12", "capacity": "300"}})
		a.Register(t, consultest.Instance{Node: "meta-n2", NodeAddress: "127.0.0.52", Service: "meta", ID: "meta-2", Port: 80,
			Meta: map[string]string{"connections": "lots"}})
		a.Register(t, consultest.Instance{Node: "meta-n3", NodeAddress: "127.0.0.53", Service: "meta", ID: "meta-3", Port: 80})
		s := waitSnapshot(t, w, "three meta instances", func(s *health.Snapshot) bool { return len(s.Pool("meta").Targets()) == 3 })
		for id, want := range map[string]health.Load{
			"meta-1": {State: health.LoadKnown, Source: health.SourceMeta, Connections: 12, Capacity: 300},
			"meta-2": {State: health.LoadMalformed, Source: health.SourceMeta, Capacity: 50},
			"meta-3": {State: health.LoadUnknown, Capacity: 50},
		} {
			if got := target(s, "meta", id).Load; got != want {
				t.Errorf("%s: load %+v, want %+v", id, got, want)
			}
		}
		waitStatus(t, w, "malformed meta counted", func(st *health.Status) bool { return st.MalformedTotal == 1 })
		a.Register(t, consultest.Instance{Node: "meta-n2", NodeAddress: "127.0.0.52", Service: "meta", ID: "meta-2", Port: 80,
			Meta: map[string]string{"connections": "8", "capacity": "oops"}})
		waitSnapshot(t, w, "malformed meta capacity", targetIs("meta", "meta-2", func(t *health.Target) bool {
			return t.Load.State == health.LoadMalformed && t.Meta["connections"] == "8"
		}))
		waitStatus(t, w, "second bad meta value counted", func(st *health.Status) bool { return st.MalformedTotal == 2 })
	})

	t.Run("Addresses", func(t *testing.T) {
		t.Parallel()
		w, _ := watch(t, "addr", 0)
		a.Register(t, consultest.Instance{Node: "addr-n1", NodeAddress: "127.0.0.61", Service: "addr", ID: "v6", Address: "2001:db8::10", Port: 443})
		a.Register(t, consultest.Instance{Node: "addr-n2", NodeAddress: "fd00::5", Service: "addr", ID: "v6-node", Port: 443})
		a.Register(t, consultest.Instance{Node: "addr-n3", NodeAddress: "127.0.0.63", Service: "addr", ID: "v4-svc", Address: "127.0.0.99", Port: 443})
		a.Register(t, consultest.Instance{Node: "addr-n4", NodeAddress: "127.0.0.64", Service: "addr", ID: "name", Address: "web.example", Port: 443})
		s := waitSnapshot(t, w, "three addressable instances", func(s *health.Snapshot) bool {
			return len(s.Pool("addr").Targets()) == 3 && s.Pool("addr").Counts().InvalidAddress == 1
		})
		for id, want := range map[string]string{"v6": "2001:db8::10", "v6-node": "fd00::5", "v4-svc": "127.0.0.99"} {
			if got := target(s, "addr", id).Address; got != netip.MustParseAddr(want) {
				t.Errorf("%s: address %v, want %v", id, got, want)
			}
		}
		waitStatus(t, w, "invalid address counted", func(st *health.Status) bool { return st.InvalidAddressTotal == 1 })
	})

	t.Run("StaleReports", func(t *testing.T) {
		t.Parallel()
		prefix := "farmdns/test-stale"
		w := startWatcher(t, a.Client, health.WatcherConfig{
			Services:     []health.ServiceConfig{{Name: "stale"}},
			LoadPrefix:   prefix,
			MaxReportAge: 2 * time.Second,
		})
		a.Register(t, consultest.Instance{Node: "stale-n1", NodeAddress: "127.0.0.71", Service: "stale", ID: "stale-1", Port: 80})
		a.Register(t, consultest.Instance{Node: "stale-n2", NodeAddress: "127.0.0.72", Service: "stale", ID: "stale-2", Port: 80})
		putReport(t, a, prefix, "stale", "stale-n1", "stale-1", 10, 1, 0, time.Now().Add(-time.Hour))
		putReport(t, a, prefix, "stale", "stale-n2", "stale-2", 30, 1, 0, time.Now())
		s := waitSnapshot(t, w, "old report is stale, fresh one known", func(s *health.Snapshot) bool {
			t1, t2 := target(s, "stale", "stale-1"), target(s, "stale", "stale-2")
			return t1 != nil && t2 != nil && t1.Load.State == health.LoadStale && t2.Load.State == health.LoadKnown
		})
		p := s.Pool("stale")
		t1 := target(s, "stale", "stale-1")
		if !t1.Eligible() || t1.Load.Connections != 10 || p.Counts().LoadStale != 1 {
			t.Errorf("stale target must stay eligible with its last report: %+v, counts %+v", t1, p.Counts())
		}
		if n, est := p.Connections(t1); n != 30 || !est {
			t.Errorf("stale estimate %d %v, want the pool mean 30", n, est)
		}
		// With no write to Consul at all, the fresh report turns stale on time.
		s = waitSnapshot(t, w, "fresh report ages into stale", targetIs("stale", "stale-2", func(t *health.Target) bool {
			return t.Load.State == health.LoadStale
		}))
		if c := s.Pool("stale").Counts(); c.LoadStale != 2 {
			t.Errorf("stale count %d", c.LoadStale)
		}
		if _, ok := s.Pool("stale").MeanConnections(); ok {
			t.Error("no known load left, yet a mean")
		}
	})
}
