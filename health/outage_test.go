package health_test

import (
	"strings"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
)

// outageConfig uses a short max staleness so that not-ready shows quickly.
func outageConfig(service string) health.WatcherConfig {
	return health.WatcherConfig{
		Services:     []health.ServiceConfig{{Name: service}},
		MaxStaleness: 2 * time.Second,
	}
}

func allFailing(st *health.Status) bool {
	for _, d := range st.DataSets {
		if !d.Failing {
			return false
		}
	}
	return true
}

func TestConsulRestart(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t)
	register := func(port int, conns int64) {
		a.Register(t, consultest.Instance{Node: "r-n1", NodeAddress: "127.0.0.81", Service: "web", ID: "web-1", Port: port})
		a.Register(t, consultest.Instance{Node: "r-n2", NodeAddress: "127.0.0.82", Service: "web", ID: "web-2", Port: port})
		putReport(t, a, health.DefaultLoadPrefix, "web", "r-n1", "web-1", conns, 1, 0, time.Now())
	}
	register(80, 10)
	w := startWatcher(t, a.Client, outageConfig("web"))
	before := waitSnapshot(t, w, "two targets with a load", func(s *health.Snapshot) bool {
		p := s.Pool("web")
		return len(p.Targets()) == 2 && p.Counts().LoadKnown == 1
	})
	waitStatus(t, w, "synced", (*health.Status).Synced)

	a.Stop()
	st := waitStatus(t, w, "every data set failing", allFailing)
	for _, d := range st.DataSets {
		if d.LastError == nil || d.Errors == 0 {
			t.Errorf("%s %s: failing without an error or a count: %+v", d.Kind, d.Name, d)
		}
	}
	if ok, why := w.Ready(); !ok {
		t.Errorf("not ready right after Consul went away (max staleness not reached): %s", why)
	}
	// Past max staleness: not ready, with a reason, and still serving the last good data.
	deadline := time.Now().Add(waitTimeout)
	for ok, _ := w.Ready(); ok; ok, _ = w.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("still ready long after max staleness without Consul")
		}
		time.Sleep(50 * time.Millisecond)
	}
	ok, why := w.Ready()
	if ok || !strings.Contains(why, "max staleness") || !strings.Contains(why, "service web") {
		t.Errorf("Ready() = %v, %q", ok, why)
	}
	if s := w.Snapshot(); s != before || len(s.Pool("web").Targets()) != 2 {
		t.Fatalf("the snapshot changed while Consul was down (generation %d -> %d)", before.Generation(), s.Generation())
	}

	// A restarted dev agent has lost its state; re-register with a new port
	// and load to see that the watcher resumed.
	a.Restart()
	register(8080, 20)
	waitSnapshot(t, w, "fresh data after the restart", func(s *health.Snapshot) bool {
		t1, t2 := target(s, "web", "web-1"), target(s, "web", "web-2")
		return t1 != nil && t2 != nil && t1.Port == 8080 && t2.Port == 8080 && t1.Load.Connections == 20
	})
	waitStatus(t, w, "recovered", func(st *health.Status) bool { return !st.DataSets[0].Failing && !st.DataSets[1].Failing })
	if ok, why := w.Ready(); !ok {
		t.Errorf("not ready after recovery: %s", why)
	}
	// And it keeps following changes.
	a.SetCheck(t, "r-n2", "web-2", consultest.ServiceCheckID("web-2"), api.HealthCritical)
	waitSnapshot(t, w, "health change after the restart", targetIs("web", "web-2", func(t *health.Target) bool {
		return t.Health == health.HealthCritical
	}))
}

func TestStartWithoutConsul(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t)
	a.Stop()
	w := startWatcher(t, a.Client, outageConfig("web"))
	waitStatus(t, w, "failing", allFailing)
	s := w.Snapshot()
	if s.Generation() != 0 || s.Pool("web") == nil || s.Pool("web").Synced() || len(s.Pool("web").Targets()) != 0 {
		t.Fatalf("start-up without Consul: want the empty generation-0 snapshot, got:\n%s", dump(s))
	}
	if ok, why := w.Ready(); !ok {
		t.Errorf("not ready during the start-up grace period: %s", why)
	}
	a.Restart()
	a.Register(t, consultest.Instance{Node: "s-n1", NodeAddress: "127.0.0.91", Service: "web", ID: "web-1", Port: 80})
	waitSnapshot(t, w, "pool fills once Consul answers", func(s *health.Snapshot) bool {
		return s.Pool("web").Synced() && len(s.Pool("web").Targets()) == 1
	})
}

func TestACL(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t, consultest.WithACL())
	a.Register(t, consultest.Instance{Node: "acl-n1", NodeAddress: "127.0.0.101", Service: "web", ID: "web-1", Port: 80})
	putReport(t, a, health.DefaultLoadPrefix, "web", "acl-n1", "web-1", 42, 1, 0, time.Now())

	token := func(name, rules string) string {
		t.Helper()
		p, _, err := a.Client.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := a.Client.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok.SecretID
	}
	client := func(tokenFile string) *api.Client {
		t.Helper()
		c, err := health.ConsulConfig{Address: a.Addr, TokenFile: tokenFile}.Client()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	t.Run("TokenFromFile", func(t *testing.T) {
		tok := token("farmdns-read", `
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
key_prefix "farmdns/load/" { policy = "read" }`)
		w := startWatcher(t, client(writeToken(t, tok)), outageConfig("web"))
		waitSnapshot(t, w, "target with its load through the ACL token", targetIs("web", "web-1", func(t *health.Target) bool {
			return t.Load.Known() && t.Load.Connections == 42
		}))
	})

	t.Run("WrongToken", func(t *testing.T) {
		w := startWatcher(t, client(writeToken(t, "00000000-1111-2222-3333-444444444444")), outageConfig("web"))
		st := waitStatus(t, w, "failing", allFailing)
		for _, d := range st.DataSets {
			msg := d.LastError.Error()
			if !strings.Contains(msg, "consul rejected the ACL token") || !strings.Contains(msg, "403") {
				t.Errorf("%s %s: unclear error %q", d.Kind, d.Name, msg)
			}
		}
		if n := len(w.Snapshot().Pool("web").Targets()); n != 0 {
			t.Errorf("%d targets with a wrong token", n)
		}
	})

	t.Run("TokenWithoutReadAccess", func(t *testing.T) {
		// Consul filters what the token may not read instead of failing:
		// the watcher must say so rather than publish an empty pool.
		tok := token("farmdns-kv-only", `key_prefix "farmdns/load/" { policy = "read" }`)
		w := startWatcher(t, client(writeToken(t, tok)), outageConfig("web"))
		st := waitStatus(t, w, "service set failing", func(st *health.Status) bool { return st.DataSets[1].Failing })
		if msg := st.DataSets[1].LastError.Error(); !strings.Contains(msg, "filtered the results by ACLs") {
			t.Errorf("unclear error %q", msg)
		}
		if st.DataSets[0].Failing {
			t.Errorf("the KV set is readable with this token: %v", st.DataSets[0].LastError)
		}
		if n := len(w.Snapshot().Pool("web").Targets()); n != 0 || w.Snapshot().Pool("web").Synced() {
			t.Errorf("a filtered answer was published")
		}
	})
}

// TestConsulRestartProductionWait runs the restart with the production
// blocking wait (health.DefaultMaxWaitTime, a minute). The restarted agent
// has lost its state, so its indexes are far below the ones the loops last
// saw; a loop that waited on its old index would hang for the whole minute.
// The reset to index 0 after an error makes the first query after the
// outage a plain read, so the data is back within seconds.
func TestConsulRestartProductionWait(t *testing.T) {
	t.Parallel()
	a := consultest.Start(t)
	in := consultest.Instance{Node: "pw-n1", NodeAddress: "127.0.0.85", Service: "web", ID: "web-1", Port: 80}
	a.Register(t, in)
	// Raise both data sets' indexes well past what the fresh agent reaches.
	for i := range 30 {
		status := api.HealthCritical
		if i%2 == 1 {
			status = api.HealthPassing
		}
		a.SetCheck(t, "pw-n1", "web-1", consultest.ServiceCheckID("web-1"), status)
		putReport(t, a, health.DefaultLoadPrefix, "web", "pw-n1", "web-1", int64(i), int64(i), 0, time.Now())
	}
	cfg := health.WatcherConfig{Services: []health.ServiceConfig{{Name: "web"}}} // production timings
	w := startWatcher(t, a.Client, cfg)
	waitSnapshot(t, w, "the last load before the outage", targetIs("web", "web-1", func(t *health.Target) bool {
		return t.Load.Connections == 29 && t.Health == health.HealthPassing
	}))
	waitStatus(t, w, "synced", (*health.Status).Synced)
	before := w.Status().DataSets

	a.Stop()
	waitStatus(t, w, "every data set failing", allFailing)
	a.Restart()
	start := time.Now()
	in.Port = 8080
	a.Register(t, in)
	putReport(t, a, health.DefaultLoadPrefix, "web", "pw-n1", "web-1", 7, 7, 0, time.Now())
	waitSnapshot(t, w, "fresh data after the restart, well within the one-minute wait", targetIs("web", "web-1", func(t *health.Target) bool {
		return t.Port == 8080 && t.Load.Connections == 7
	}))
	t.Logf("back %v after the restart", time.Since(start).Round(time.Millisecond))
	after := w.Status().DataSets
	for i := range before {
		// The premise: every loop's old index is ahead of the new agent's.
		if after[i].Index >= before[i].Index {
			t.Errorf("%s %s: index %d before the restart, %d after: the test needs the old one ahead", before[i].Kind, before[i].Name, before[i].Index, after[i].Index)
		}
	}
}
