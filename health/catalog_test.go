package health_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
)

// TestReadCatalog: the view holds nodes by lower-case name, every instance
// (critical ones too) with its own and its node's check statuses, tags,
// addresses and node meta, linked to the node.
func TestReadCatalog(t *testing.T) {
	a := consultest.Start(t)
	a.Register(t, consultest.Instance{Node: "Web1", NodeAddress: "10.0.0.1", Service: "Web", ID: "web-1", Port: 80, Tags: []string{"Primary"}})
	a.Register(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "Web", ID: "web-2", Address: "2001:db8::2", Port: 81, Status: api.HealthCritical})
	a.SetCheck(t, "Web1", "", "node-check", api.HealthWarning)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cat, err := health.ReadCatalog(ctx, a.Client)
	if err != nil {
		t.Fatal(err)
	}
	if cat.Datacenter != "dc1" || cat.Index == 0 {
		t.Fatalf("datacenter %q index %d", cat.Datacenter, cat.Index)
	}
	web := cat.Services["web"]
	if len(web) != 2 {
		t.Fatalf("web has %d instances, want 2 (critical ones included)", len(web))
	}
	byID := map[string]*health.CatalogInstance{}
	for _, in := range web {
		byID[in.ID] = in
	}
	w1, w2 := byID["web-1"], byID["web-2"]
	if w1 == nil || w2 == nil {
		t.Fatalf("instances %v", byID)
	}
	if w1.Node != cat.Nodes["web1"] || w1.Node.Address != "10.0.0.1" || !w1.HasTag("PRIMARY") || w1.Status() != health.HealthWarning {
		t.Errorf("web-1: node %+v tags %v checks %v", w1.Node, w1.Tags, w1.Checks)
	}
	if w2.Address != "2001:db8::2" || w2.Port != 81 || w2.Status() != health.HealthCritical {
		t.Errorf("web-2: %+v", w2)
	}
}

// TestCatalogWatcherFollowsChanges: a registration, a check going critical
// and a deregistration each reach the view without a restart.
func TestCatalogWatcherFollowsChanges(t *testing.T) {
	a := consultest.Start(t)
	w := health.NewCatalogWatcher(health.CatalogWatcherConfig{WaitTime: 10 * time.Second, MinInterval: 10 * time.Millisecond},
		a.Client, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	waitFor := func(what string, ok func(*health.Catalog) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			w.Ask("web") // the view holds only the services asked for
			if c := w.Catalog(); c != nil && ok(c) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the view never showed %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("the first read", func(*health.Catalog) bool { return true })
	a.Register(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", ID: "web-1", Port: 80})
	waitFor("the registration", func(c *health.Catalog) bool { return len(c.Services["web"]) == 1 })
	a.SetCheck(t, "n1", "web-1", consultest.ServiceCheckID("web-1"), api.HealthCritical)
	waitFor("the critical check", func(c *health.Catalog) bool {
		return len(c.Services["web"]) == 1 && c.Services["web"][0].Status() == health.HealthCritical
	})
	a.Deregister(t, "n1", "web-1")
	waitFor("the deregistration", func(c *health.Catalog) bool { return len(c.Services["web"]) == 0 })
}

// TestCatalogWatcherOnDemand: a service is watched from its first question
// on and loaded when Await returns; a service nobody asks for, or a name
// that is no service, costs no watch; a node check reaches the view through
// the service's watch; an idle watch stops and its service leaves the view.
func TestCatalogWatcherOnDemand(t *testing.T) {
	a := consultest.Start(t)
	a.Register(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "Web", ID: "web-1", Port: 80})
	a.Register(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "db", ID: "db-1", Port: 5432})
	w := health.NewCatalogWatcher(health.CatalogWatcherConfig{
		WaitTime: 10 * time.Second, MinInterval: 10 * time.Millisecond,
		AskWait: 20 * time.Second, IdleTimeout: 2 * time.Second,
	}, a.Client, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	poll := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("never: %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	poll("the first view", func() bool { return w.Catalog() != nil })
	cat := w.Catalog()
	if !cat.Partial || cat.Loaded("web") || cat.Loaded("db") || !cat.Loaded("nosuch") || len(cat.Services) != 0 {
		t.Fatalf("first view: partial %v, services %v, listed %v", cat.Partial, cat.Services, cat.Listed)
	}
	w.Ask("nosuch")
	if got := w.Watching(); len(got) != 0 {
		t.Fatalf("a name that is no service is watched: %v", got)
	}

	w.Ask("web")
	cat = w.Await([]string{"web"})
	if cat == nil {
		t.Fatal("web never loaded")
	}
	if web := cat.Services["web"]; len(web) != 1 || web[0].ID != "web-1" || web[0].Node != cat.Nodes["n1"] {
		t.Fatalf("web: %+v", web)
	}
	if _, ok := cat.Services["db"]; ok || !slices.Equal(w.Watching(), []string{"web"}) {
		t.Fatalf("watching %v, db loaded %v: only web was asked for", w.Watching(), ok)
	}

	start := time.Now()
	a.SetCheck(t, "n1", "", "node-check", api.HealthCritical)
	poll("the node check in web's instance", func() bool {
		w.Ask("web")
		web := w.Catalog().Services["web"]
		return len(web) == 1 && web[0].Status() == health.HealthCritical
	})
	t.Logf("a node check reached the view in %v", time.Since(start))

	start = time.Now()
	poll("the idle watch stopping", func() bool {
		_, loaded := w.Catalog().Services["web"]
		return len(w.Watching()) == 0 && !loaded
	})
	t.Logf("web's watch stopped %v after its last question (idle timeout 2s)", time.Since(start))
}

// TestCatalogWatcherPolled: beyond MaxWatches a service is polled rather
// than given its own blocking query; it loads on its first question and
// follows a check going critical and a new instance all the same.
func TestCatalogWatcherPolled(t *testing.T) {
	a := consultest.Start(t)
	a.Register(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", ID: "web-1", Port: 80})
	a.Register(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "db", ID: "db-1", Port: 5432})
	w := health.NewCatalogWatcher(health.CatalogWatcherConfig{
		WaitTime: 10 * time.Second, MinInterval: 10 * time.Millisecond, AskWait: 20 * time.Second, MaxWatches: 1,
	}, a.Client, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	for deadline := time.Now().Add(20 * time.Second); w.Catalog() == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no first view")
		}
	}
	w.Ask("web")
	w.Ask("db") // over MaxWatches: polled
	cat := w.Await([]string{"web", "db"})
	if cat == nil || len(cat.Services["db"]) != 1 || len(cat.Services["web"]) != 1 {
		t.Fatalf("web and db not both loaded: %v", cat)
	}
	poll := func(what string, ok func([]*health.CatalogInstance) bool) {
		t.Helper()
		start := time.Now()
		for !ok(w.Catalog().Services["db"]) {
			if time.Since(start) > 20*time.Second {
				t.Fatalf("never: %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("%s: %v", what, time.Since(start))
	}
	a.SetCheck(t, "n2", "db-1", consultest.ServiceCheckID("db-1"), api.HealthCritical)
	poll("db-1 critical", func(db []*health.CatalogInstance) bool {
		return len(db) == 1 && db[0].Status() == health.HealthCritical
	})
	a.Register(t, consultest.Instance{Node: "n3", NodeAddress: "10.0.0.3", Service: "db", ID: "db-2", Port: 5432})
	poll("db-2 registered", func(db []*health.CatalogInstance) bool { return len(db) == 2 })
}

// TestCatalogWatcherFailFast: once a wait for a service timed out (Consul
// gone), the next questions do not wait again: each would hold a reader of
// the DNS server for AskWait.
func TestCatalogWatcherFailFast(t *testing.T) {
	a := consultest.Start(t)
	a.Register(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", ID: "web-1", Port: 80})
	const askWait = 6 * time.Second
	w := health.NewCatalogWatcher(health.CatalogWatcherConfig{WaitTime: 10 * time.Second, AskWait: askWait},
		a.Client, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	for deadline := time.Now().Add(20 * time.Second); w.Catalog() == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no first view")
		}
	}
	a.Stop()
	w.Ask("web")
	if cat := w.Await([]string{"web"}); cat != nil {
		t.Fatal("web loaded with Consul stopped")
	}
	start := time.Now()
	if cat := w.Await([]string{"web"}); cat != nil {
		t.Fatal("web loaded with Consul stopped")
	}
	// Half of AskWait is far more than an answer at once takes, and far
	// less than a second wait.
	if took := time.Since(start); took > askWait/2 {
		t.Fatalf("the second question waited %v after the first timed out", took)
	}
}
