package health

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
)

func reporterCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestReporterAgainstConsul(t *testing.T) {
	a := consultest.Start(t)
	ctx := reporterCtx(t)
	r := NewReporter(a.Client, DefaultLoadPrefix)

	node, err := r.NodeName(ctx)
	if err != nil || node != a.NodeName {
		t.Fatalf("NodeName = %q, %v; want %q", node, err, a.NodeName)
	}

	// Load reports round-trip through the contract's parser.
	want := LoadReport{Connections: 42, Accepted: 1000, Capacity: 20000, Updated: time.Now().UTC().Truncate(time.Millisecond)}
	if err := r.PutLoad(ctx, "ws", node, "ws-1", want); err != nil {
		t.Fatal(err)
	}
	kv, _, err := a.Client.KV().Get(LoadKey(DefaultLoadPrefix, "ws", node, "ws-1"), nil)
	if err != nil || kv == nil {
		t.Fatalf("get load key: %v, %v", kv, err)
	}
	got, err := ParseLoadReport(kv.Value)
	if err != nil || !got.Updated.Equal(want.Updated) || got.Connections != 42 || got.Accepted != 1000 || got.Capacity != 20000 {
		t.Fatalf("stored report %+v, %v; want %+v", got, err, want)
	}

	// Register with a TTL check: critical until passed.
	in := Instance{Service: "ws", ID: "ws-1", Port: 8080, Tags: []string{"a"}, Meta: map[string]string{"shard": "s1"},
		Check: Check{TTL: 15 * time.Second, DeregisterAfter: time.Minute}}
	if err := r.Register(ctx, in); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.Registered(ctx, "ws-1"); !ok || err != nil {
		t.Fatalf("Registered = %v, %v", ok, err)
	}
	if s := checkStatus(t, a, CheckID("ws-1")); s != api.HealthCritical {
		t.Fatalf("new TTL check is %q, want critical", s)
	}
	if err := r.SetTTL(ctx, "ws-1", true, "counting"); err != nil {
		t.Fatal(err)
	}
	if s := checkStatus(t, a, CheckID("ws-1")); s != api.HealthPassing {
		t.Fatalf("passed TTL check is %q, want passing", s)
	}
	svc, _, err := a.Client.Agent().Service("ws-1", nil)
	if err != nil || svc.Meta["shard"] != "s1" || svc.Port != 8080 {
		t.Fatalf("registered service %+v, %v", svc, err)
	}

	// Maintenance: ours is lifted, an operator's stays.
	if err := r.EnableMaintenance(ctx, "ws-1", "drain"); err != nil {
		t.Fatal(err)
	}
	if s := checkStatus(t, a, "_service_maintenance:ws-1"); s != api.HealthCritical {
		t.Fatalf("maintenance check is %q, want critical", s)
	}
	if lifted, err := r.DisableOwnMaintenance(ctx, "ws-1"); !lifted || err != nil {
		t.Fatalf("DisableOwnMaintenance (ours) = %v, %v", lifted, err)
	}
	if err := a.Client.Agent().EnableServiceMaintenance("ws-1", "operator says no"); err != nil {
		t.Fatal(err)
	}
	if lifted, err := r.DisableOwnMaintenance(ctx, "ws-1"); lifted || err != nil {
		t.Fatalf("DisableOwnMaintenance (operator's) = %v, %v", lifted, err)
	}
	if s := checkStatus(t, a, "_service_maintenance:ws-1"); s != api.HealthCritical {
		t.Fatalf("operator's maintenance check is %q, want still critical", s)
	}

	// Deregister is idempotent; a lost registration is recognisable.
	if err := r.Deregister(ctx, "ws-1"); err != nil {
		t.Fatal(err)
	}
	if err := r.Deregister(ctx, "ws-1"); err != nil {
		t.Fatalf("second Deregister: %v", err)
	}
	if ok, err := r.Registered(ctx, "ws-1"); ok || err != nil {
		t.Fatalf("Registered after deregister = %v, %v", ok, err)
	}
	if err := r.SetTTL(ctx, "ws-1", true, ""); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("SetTTL on a lost check: %v, want ErrNotRegistered", err)
	}
	if err := r.EnableMaintenance(ctx, "ws-1", "drain"); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("EnableMaintenance on a lost instance: %v, want ErrNotRegistered", err)
	}

	if err := r.DeleteLoad(ctx, "ws", node, "ws-1"); err != nil {
		t.Fatal(err)
	}
	if kv, _, err := a.Client.KV().Get(LoadKey(DefaultLoadPrefix, "ws", node, "ws-1"), nil); kv != nil || err != nil {
		t.Fatalf("after DeleteLoad: %v, %v", kv, err)
	}
}

func TestReporterTCPCheck(t *testing.T) {
	a := consultest.Start(t)
	ctx := reporterCtx(t)
	r := NewReporter(a.Client, DefaultLoadPrefix)
	in := Instance{Service: "ws", ID: "ws-tcp", Port: 1,
		Check: Check{TCP: "127.0.0.1:1", Interval: 10 * time.Second, Timeout: time.Second}}
	if err := r.Register(ctx, in); err != nil {
		t.Fatal(err)
	}
	checks, err := a.Client.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	c, ok := checks[CheckID("ws-tcp")]
	if !ok || c.Type != "tcp" {
		t.Fatalf("check %+v", c)
	}
}

func TestReporterDenied(t *testing.T) {
	a := consultest.Start(t, consultest.WithACL())
	cfg := api.DefaultConfig()
	cfg.Address = a.Addr
	cfg.Token = "" // anonymous: default policy deny
	anon, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := NewReporter(anon, DefaultLoadPrefix)
	if _, err := r.NodeName(reporterCtx(t)); !errors.Is(err, ErrDenied) {
		t.Fatalf("NodeName without a token: %v, want ErrDenied", err)
	}
}

func checkStatus(t *testing.T, a *consultest.Agent, checkID string) string {
	t.Helper()
	checks, err := a.Client.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	c, ok := checks[checkID]
	if !ok {
		return "(missing)"
	}
	return c.Status
}
