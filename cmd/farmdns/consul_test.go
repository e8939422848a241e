package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
)

// farm is a running farmdns whose pool at the apex of farm.example.com is fed
// by a real Consul agent.
type farm struct {
	consul *consultest.Agent
	srv    *server
	dns    string
}

func startFarm(t *testing.T, nodes int, pool string, consulDown bool) *farm {
	t.Helper()
	a := consultest.Start(t)
	for i := 1; i <= nodes; i++ {
		registerNode(t, a, i, 500)
	}
	if consulDown {
		a.Stop()
	}
	config := fmt.Sprintf(`dns:
  listen: ["127.0.0.1:0"]
http:
  listen: "127.0.0.1:0"
consul:
  address: %q
zones:
  - origin: farm.example.com.
    file: farm.zone
    pools:
      - name: "@"
        service: ws
%s`, a.Addr, pool)
	srv, _ := runServer(t, writeConfig(t, config, goodZone))
	return &farm{consul: a, srv: srv, dns: srv.dns.BoundAddrs()[0].String()}
}

func registerNode(t *testing.T, a *consultest.Agent, i int, conns int64) {
	t.Helper()
	node := fmt.Sprintf("n%d", i)
	a.Register(t, consultest.Instance{Node: node, NodeAddress: fmt.Sprintf("127.0.0.%d", 10+i), Service: "ws", ID: "ws-" + node, Port: 8080})
	putLoad(t, a, i, conns)
}

func putLoad(t *testing.T, a *consultest.Agent, i int, conns int64) {
	t.Helper()
	node := fmt.Sprintf("n%d", i)
	a.PutKV(t, health.LoadKey(health.DefaultLoadPrefix, "ws", node, "ws-"+node),
		fmt.Appendf(nil, `{"connections":%d,"accepted":%d,"capacity":1000,"updated":%q}`, conns, conns, time.Now().UTC().Format(time.RFC3339Nano)))
}

// ask queries the farm's apex from a loopback source address of its own, so
// that every asker is a different resolver.
func (f *farm) ask(t *testing.T, from int) []string {
	t.Helper()
	// A /24 of its own: farmdns keys its sticky choice by the client's /24.
	d := &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, byte(1+from/250), byte(from%250), 1)}, Timeout: 2 * time.Second}
	c := &dns.Client{Dialer: d}
	r, _, err := c.Exchange(new(dns.Msg).SetQuestion("farm.example.com.", dns.TypeA), f.dns)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, rr := range r.Answer {
		out = append(out, rr.(*dns.A).A.String())
	}
	return out
}

// answered collects the addresses of many askers' answers.
func (f *farm) answered(t *testing.T, askers int) map[string]int {
	seen := map[string]int{}
	for i := range askers {
		for _, a := range f.ask(t, i) {
			seen[a]++
		}
	}
	return seen
}

// eventually retries cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

func TestConsulPools(t *testing.T) {
	f := startFarm(t, 3, "        answers: 2\n        srv: true\n", false)
	eventually(t, 5*time.Second, "all three nodes answered", func() bool {
		seen := f.answered(t, 30)
		return len(seen) == 3 && seen["127.0.0.11"] > 0 && seen["127.0.0.12"] > 0 && seen["127.0.0.13"] > 0
	})

	// SRV: ports from Consul, target names that resolve.
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	r, _, err := c.Exchange(new(dns.Msg).SetQuestion("_ws._tcp.farm.example.com.", dns.TypeSRV), f.dns)
	if err != nil || len(r.Answer) != 2 || r.Answer[0].(*dns.SRV).Port != 8080 {
		t.Fatalf("SRV: %v %v", r, err)
	}
	r, _, err = c.Exchange(new(dns.Msg).SetQuestion(r.Answer[0].(*dns.SRV).Target, dns.TypeA), f.dns)
	if err != nil || len(r.Answer) != 1 {
		t.Fatalf("SRV target: %v %v", r, err)
	}

	// A health flip takes a node out of the answers within a second.
	f.consul.SetCheck(t, "n1", "ws-n1", consultest.ServiceCheckID("ws-n1"), api.HealthCritical)
	took := eventually(t, time.Second, "critical node left the answers", func() bool { return f.answered(t, 20)["127.0.0.11"] == 0 })
	t.Logf("health flip to answers: %v", took)
	f.consul.SetCheck(t, "n1", "ws-n1", consultest.ServiceCheckID("ws-n1"), api.HealthPassing)
	eventually(t, time.Second, "recovered node back", func() bool { return f.answered(t, 40)["127.0.0.11"] > 0 })

	// Maintenance mode drains: never handed out.
	f.consul.SetCheck(t, "n2", "", "_node_maintenance", api.HealthCritical)
	eventually(t, time.Second, "draining node left the answers", func() bool { return f.answered(t, 20)["127.0.0.12"] == 0 })

	// Readiness and metrics reflect Consul.
	web := "http://" + f.srv.webLn.Addr().String()
	if code := httpGet(t, web+"/readyz"); code != 200 {
		t.Errorf("/readyz %d with Consul up", code)
	}
	metrics := httpBody(t, web+"/metrics")
	for _, want := range []string{"farmdns_consul_ready 1", `farmdns_consul_last_sync_timestamp_seconds{dataset="service:ws"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	checkMetricsContract(t, metrics)

	// Consul goes away: the last good pools keep answering.
	before := f.answered(t, 20)
	f.consul.Stop()
	time.Sleep(300 * time.Millisecond)
	after := f.answered(t, 20)
	if len(after) == 0 || !slices.Equal(keys(after), keys(before)) {
		t.Errorf("answers changed when Consul stopped: before %v, after %v", before, after)
	}
}

func keys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func httpGet(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func httpBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestConsulLateStart: farmdns starts while Consul is down, answers its
// static records, and fills the pool as soon as Consul answers.
func TestConsulLateStart(t *testing.T) {
	f := startFarm(t, 0, "", true)
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(new(dns.Msg).SetQuestion("www.farm.example.com.", dns.TypeA), f.dns)
	if err != nil || len(r.Answer) != 1 {
		t.Fatalf("static record with Consul down: %v %v", r, err)
	}
	if got := f.ask(t, 1); len(got) != 0 {
		t.Fatalf("pool answered %v before Consul ever had targets", got)
	}
	f.consul.Restart()
	registerNode(t, f.consul, 1, 10)
	eventually(t, 15*time.Second, "pool filled once Consul answers", func() bool { return len(f.ask(t, 2)) == 1 })
}

// checkMetricsContract holds a live scrape of farmdns to the metrics that
// deploy/'s rules and dashboard are written against: each is exported, with
// its type, and with no label the contract lacks; and no farmdns metric is
// exported that the contract does not list.
func checkMetricsContract(t *testing.T, exposition string) {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(exposition))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	for name, want := range deployContract {
		if strings.HasPrefix(name, "farmdns_agent_") {
			continue // the agent's own, checked by its tests
		}
		mf := families[name]
		if _, ok := deployConditional[name]; ok && mf == nil {
			continue
		}
		if mf == nil {
			t.Errorf("%s: in the contract, not exported", name)
			continue
		}
		if got := strings.ToLower(mf.GetType().String()); got != want.typ {
			t.Errorf("%s: type %s, contract says %s", name, got, want.typ)
		}
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if !slices.Contains(want.labels, l.GetName()) {
					t.Errorf("%s: label %q is not in the contract", name, l.GetName())
				}
			}
		}
	}
	for name := range families {
		if _, ok := deployContract[name]; strings.HasPrefix(name, "farmdns_") && !ok {
			t.Errorf("%s: exported, but not in the contract (deployContract)", name)
		}
	}
}
