package health

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
)

// fakeConsulBodies returns a /v1/health/service and a /v1/kv answer for n
// instances, in the shape Consul 1.20 writes them (every field it sends for
// a catalog-registered instance with one service check).
func fakeConsulBodies(n int) (healthBody, kvBody []byte) {
	var h, kv bytes.Buffer
	h.WriteByte('[')
	kv.WriteByte('[')
	for i := range n {
		if i > 0 {
			h.WriteByte(',')
			kv.WriteByte(',')
		}
		node, id := fmt.Sprintf("big-n%04d", i%1000), fmt.Sprintf("big-%05d", i)
		fmt.Fprintf(&h, `{"Node":{"ID":"","Node":%q,"Address":"127.1.%d.%d","Datacenter":"dc1","TaggedAddresses":null,"Meta":null,"CreateIndex":13,"ModifyIndex":13},`+
			`"Service":{"Kind":"","ID":%q,"Service":"big","Tags":["farm"],"Address":"","Meta":{"rack":"%d"},"Port":%d,"Weights":{"Passing":1,"Warning":1},"EnableTagOverride":false,"Proxy":{"Mode":"","MeshGateway":{},"Expose":{}},"Connect":{},"PeerName":"","CreateIndex":%d,"ModifyIndex":%d},`+
			`"Checks":[{"Node":%q,"CheckID":"service:%s","Name":"service %s","Status":"passing","Notes":"","Output":"","ServiceID":%q,"ServiceName":"big","ServiceTags":["farm"],"Type":"","Interval":"","Timeout":"","ExposedPort":0,"Definition":{},"CreateIndex":%d,"ModifyIndex":%d}]}`,
			node, (i%1000)/250, (i%1000)%250+1, id, i%40, 10000+i/1000, 100+i, 100+i, node, id, id, id, 100+i, 100+i)
		v := fmt.Appendf(nil, `{"connections":%d,"accepted":%d,"capacity":20000,"updated":%q}`, i%1000, i, time.Now().UTC().Format(time.RFC3339Nano))
		fmt.Fprintf(&kv, `{"LockIndex":0,"Key":%q,"Flags":0,"Value":%q,"CreateIndex":%d,"ModifyIndex":%d}`,
			LoadKey(DefaultLoadPrefix, "big", node, id), base64.StdEncoding.EncodeToString(v), 200+i, 200+i)
	}
	h.WriteByte(']')
	kv.WriteByte(']')
	return h.Bytes(), kv.Bytes()
}

// fakeConsul serves the bodies of fakeConsulBodies, gzipped as Consul does.
func fakeConsul(tb testing.TB, n int) *api.Client {
	tb.Helper()
	hb, kb := fakeConsulBodies(n)
	gz := func(b []byte) []byte {
		var out bytes.Buffer
		zw := gzip.NewWriter(&out)
		_, _ = zw.Write(b)
		_ = zw.Close()
		return out.Bytes()
	}
	hz, kz := gz(hb), gz(kb)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := hz
		if strings.HasPrefix(r.URL.Path, "/v1/kv/") {
			body = kz
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("X-Consul-Index", "1000")
		w.Header().Set("X-Consul-KnownLeader", "true")
		_, _ = w.Write(body)
	}))
	tb.Cleanup(srv.Close)
	c, err := api.NewClient(&api.Config{Address: strings.TrimPrefix(srv.URL, "http://")})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// processCPU is this process's user+system CPU time: the figure a loaded,
// shared machine distorts least.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRead50k is one read of each endpoint at 50,000 instances, as the
// watcher makes it, through a real HTTP client from a fake Consul (serving
// costs next to nothing: the bodies are prepared). cpu-ms/op is the process
// CPU time, which is what a shared machine distorts least.
//
//	go test -run XXX -bench BenchmarkRead50k -benchtime 20x ./health/
func BenchmarkRead50k(b *testing.B) {
	c := fakeConsul(b, 50000)
	q := &api.QueryOptions{AllowStale: true}
	run := func(b *testing.B, read func() error) {
		b.ReportAllocs()
		cpu0 := processCPU(b)
		for b.Loop() {
			if err := read(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(processCPU(b)-cpu0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
	}
	b.Run("health/api", func(b *testing.B) {
		run(b, func() error {
			e, _, err := c.Health().Service("big", "", false, q)
			_ = instancesFromEntries(e, DefaultLoadPrefix, "big")
			return err
		})
	})
	b.Run("health/lean", func(b *testing.B) {
		run(b, func() error {
			e, _, err := healthService(c, "big", q)
			_ = instancesFromHealth(e, DefaultLoadPrefix, "big")
			return err
		})
	})
	b.Run("kv/api", func(b *testing.B) {
		run(b, func() error {
			p, _, err := c.KV().List(DefaultLoadPrefix+"/", q)
			_ = kvFromPairs(p)
			return err
		})
	})
}

// TestLeanHealthDecode: the lean decoder reads a real Consul answer to the
// same instances as the API client's full decode, for every kind of check
// and field the watcher uses.
func TestLeanHealthDecode(t *testing.T) {
	a := consultest.Start(t)
	for _, in := range []consultest.Instance{
		{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", ID: "a", Port: 80, Tags: []string{"x", "y"}, Meta: map[string]string{"capacity": "10"}},
		{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", ID: "b", Address: "10.0.1.2", Port: 81, Status: api.HealthWarning},
		{Node: "n2", NodeAddress: "10.0.0.2", Service: "web", ID: "c", Port: 82, Status: api.HealthCritical},
		{Node: "n3", NodeAddress: "2001:db8::3", Service: "web", ID: "d", Port: 83},
		{Node: "n4", NodeAddress: "10.0.0.4", Service: "web", ID: "e", Port: 84},
		{Node: "n4", NodeAddress: "10.0.0.4", Service: "other", ID: "o", Port: 85},
	} {
		a.Register(t, in)
	}
	a.SetCheck(t, "n2", "", "_node_maintenance", api.HealthCritical)
	a.SetCheck(t, "n3", "d", "_service_maintenance:d", api.HealthCritical)
	a.SetCheck(t, "n4", "", "disk", api.HealthWarning)

	entries, _, err := a.Client.Health().Service("web", "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := instancesFromEntries(entries, DefaultLoadPrefix, "web")
	lean, _, err := healthService(a.Client, "web", nil)
	if err != nil {
		t.Fatal(err)
	}
	got := instancesFromHealth(lean, DefaultLoadPrefix, "web")
	if len(want) != 5 || !instancesEqual(got, want) {
		t.Fatalf("lean decode:\n got  %+v\n want %+v", got, want)
	}
	for i := range got {
		if got[i].loadKey != want[i].loadKey {
			t.Errorf("load key %q, want %q", got[i].loadKey, want[i].loadKey)
		}
	}
	states := map[string]bool{}
	for _, in := range got {
		states[fmt.Sprint(in.health, in.draining)] = true
	}
	if len(states) < 4 { // passing, warning, critical+draining, passing+draining
		t.Errorf("the cases cover only %v", states)
	}
}

// TestWaitForChangeIndex: on a real Consul, a /v1/health/service query
// filtered to nothing (waitForChange) carries the index of the whole
// service, when it times out with nothing new and when a check of the
// service changes, so that waiting on it and reading the instances only
// when its index moves misses nothing.
func TestWaitForChangeIndex(t *testing.T) {
	// An agent answers a blocking health query from its streaming view by
	// default; with streaming off, from the servers' blocking RPC.
	t.Run("streaming", func(t *testing.T) { testWaitForChangeIndex(t, consultest.Start(t)) })
	t.Run("rpc", func(t *testing.T) {
		testWaitForChangeIndex(t, consultest.Start(t, consultest.WithConfig("use_streaming_backend = false")))
	})
}

func testWaitForChangeIndex(t *testing.T, a *consultest.Agent) {
	a.Register(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", ID: "a", Port: 80})
	a.Register(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "web", ID: "b", Port: 80})
	full := func(index uint64) uint64 {
		t.Helper()
		e, meta, err := healthService(a.Client, "web", &api.QueryOptions{WaitIndex: index, WaitTime: 10 * time.Second})
		if err != nil || len(e) != 2 {
			t.Fatalf("full read: %d entries, %v", len(e), err)
		}
		return meta.LastIndex
	}
	// waitOnly runs off the test goroutine too: it returns its error.
	waitOnly := func(index uint64, wait time.Duration) (uint64, error) {
		e, meta, err := healthService(a.Client, "web", &api.QueryOptions{WaitIndex: index, WaitTime: wait, Filter: matchNothing})
		if err == nil && len(e) != 0 {
			err = fmt.Errorf("%d entries, want none", len(e))
		}
		if err != nil {
			return 0, fmt.Errorf("filtered read: %w", err)
		}
		return meta.LastIndex, nil
	}
	n := full(0)
	if got, err := waitOnly(0, 0); err != nil || got != n {
		t.Fatalf("filtered read at index %d (%v), the full read at %d", got, err, n)
	}
	if got, err := waitOnly(n, time.Second); err != nil || got != n {
		t.Fatalf("a wait on a quiet service returned index %d (%v), want %d (unchanged)", got, err, n)
	}
	type result struct {
		index uint64
		err   error
	}
	done := make(chan result, 1)
	go func() {
		m, err := waitOnly(n, 30*time.Second)
		done <- result{m, err}
	}()
	time.Sleep(200 * time.Millisecond) // let the wait start; the check is the same if it starts late
	a.SetCheck(t, "n2", "b", consultest.ServiceCheckID("b"), api.HealthCritical)
	r := <-done
	m := r.index
	if r.err != nil {
		t.Fatal(r.err)
	}
	if m <= n {
		t.Fatalf("a wait through a check change returned index %d, want > %d", m, n)
	}
	if got := full(n); got != m {
		t.Errorf("the full read after the change is at index %d, the wait saw %d", got, m)
	}
}
