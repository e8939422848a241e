package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health/consultest"
)

// TestConsulDNSOperable: with consul_dns and a real Consul, the Consul
// domain's queries are counted under it, the catalog watcher's sync state
// and the asked service's answers per target are in /metrics and /status,
// the page renders in Chromium, and /readyz fails once Consul has not
// answered for max_staleness.
func TestConsulDNSOperable(t *testing.T) {
	chromium := requireTool(t, "chromium")
	a := consultest.Start(t)
	a.Register(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", ID: "web-1", Port: 80})
	a.Register(t, consultest.Instance{Node: "n2", NodeAddress: "10.0.0.2", Service: "web", ID: "web-2", Port: 80})
	config := fmt.Sprintf(`dns:
  listen: ["127.0.0.1:0"]
http:
  listen: "127.0.0.1:0"
consul:
  address: %q
  max_staleness: 3s
consul_dns:
  domain: consul.
  policy: least-loaded
  answers: 1
`, a.Addr)
	srv, _ := runServer(t, writeConfig(t, config, goodZone))
	addr := srv.dns.BoundAddrs()[0].String()
	web := "http://" + srv.webLn.Addr().String()

	asked := 0
	eventually(t, 20*time.Second, "web.service.consul. answered", func() bool {
		in, err := dns.Exchange(new(dns.Msg).SetQuestion("web.service.consul.", dns.TypeA), addr)
		asked++
		return err == nil && in.Rcode == dns.RcodeSuccess && len(in.Answer) == 1
	})
	for range 20 {
		if _, err := dns.Exchange(new(dns.Msg).SetQuestion("web.service.consul.", dns.TypeA), addr); err != nil {
			t.Fatal(err)
		}
		asked++
	}

	eventually(t, 10*time.Second, "/readyz ready with Consul up", func() bool { return httpGet(t, web+"/readyz") == http.StatusOK })
	metrics := httpBody(t, web+"/metrics")
	for _, want := range []string{
		`farmdns_dns_requests_total{proto="udp",qtype="A",rcode="NOERROR",zone="consul."}`,
		"farmdns_consul_catalog_ready 1",
		`farmdns_consul_last_sync_timestamp_seconds{dataset="catalog:nodes"}`,
		`farmdns_consul_last_sync_timestamp_seconds{dataset="catalog:view"}`,
		`farmdns_pool_answers_total{pool="web.service.consul.",target="n1/web-1"}`,
		`farmdns_pool_answers_total{pool="web.service.consul.",target="n2/web-2"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, `zone="none"`) {
		t.Errorf("/metrics counts Consul DNS queries in no zone")
	}
	// Without pools the pool watcher's metrics are absent: only what is
	// exported is held to the contract.
	for _, line := range strings.Split(metrics, "\n") {
		typed, ok := strings.CutPrefix(line, "# TYPE ")
		name, _, _ := strings.Cut(typed, " ")
		if _, known := deployContract[name]; ok && strings.HasPrefix(name, "farmdns_") && !known {
			t.Errorf("%s: exported, but not in the contract (deployContract)", name)
		}
	}

	var got struct {
		ConsulDNS *struct {
			Domains         []string
			Ready           bool
			Index           uint64
			Services, Nodes int
			DataSets        []struct{ Kind, Name string } `json:"data_sets"`
			Pools           []struct {
				Name    string
				Targets []struct {
					Node    string
					Address string
					Health  string
					Answers int
				}
			}
		} `json:"consul_dns"`
	}
	if err := json.Unmarshal([]byte(httpBody(t, web+"/status.json")), &got); err != nil {
		t.Fatal(err)
	}
	cs := got.ConsulDNS
	if cs == nil || len(cs.Domains) != 1 || cs.Domains[0] != "consul." || !cs.Ready || cs.Index == 0 || cs.Services < 2 || cs.Nodes < 2 || len(cs.DataSets) != 3 {
		t.Fatalf("status.json consul_dns: %+v", cs)
	}
	if len(cs.Pools) != 1 || cs.Pools[0].Name != "web.service.consul." || len(cs.Pools[0].Targets) != 2 {
		t.Fatalf("status.json consul_dns pools: %+v", cs.Pools)
	}
	sum := 0
	for _, tg := range cs.Pools[0].Targets {
		if tg.Health != "passing" || !strings.HasPrefix(tg.Address, "10.0.0.") {
			t.Errorf("status.json target %+v", tg)
		}
		sum += tg.Answers
	}
	if sum == 0 || sum > asked {
		t.Errorf("status.json: %d answers counted, %d asked", sum, asked)
	}

	page := httpBody(t, web+"/status")
	for _, want := range []string{`id="consul-dns"`, "web.service.consul.", "n1/web-1", "catalog view"} {
		if !strings.Contains(page, want) {
			t.Errorf("/status lacks %s", want)
		}
	}
	checkConsulDNSInChromium(t, chromium, web+"/status")

	// A quiet catalog is not a stale one: the blocking queries answer
	// within max_staleness, and the view needs no new read to stay fresh.
	for end := time.Now().Add(2 * 3 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		if code := httpGet(t, web+"/readyz"); code != http.StatusOK {
			t.Fatalf("/readyz on a quiet catalog: %d %s", code, httpBody(t, web+"/readyz"))
		}
	}

	// Consul goes away: still answering, but not ready once the catalog
	// has gone max_staleness without an answer.
	a.Stop()
	eventually(t, 30*time.Second, "/readyz not ready after Consul stopped", func() bool {
		return httpGet(t, web+"/readyz") == http.StatusServiceUnavailable
	})
	if body := httpBody(t, web+"/readyz"); !strings.Contains(body, "consul_dns catalog") {
		t.Errorf("/readyz says %q, want the catalog named", body)
	}
	if m := httpBody(t, web+"/metrics"); !strings.Contains(m, "farmdns_consul_catalog_ready 0") {
		t.Errorf("/metrics: catalog still ready with Consul stopped")
	}
	if in, err := dns.Exchange(new(dns.Msg).SetQuestion("web.service.consul.", dns.TypeA), addr); err != nil || len(in.Answer) != 1 {
		t.Errorf("not answering from the last view with Consul stopped: %v %v", in, err)
	}
}

// checkConsulDNSInChromium renders the status page and finds the Consul DNS
// section with its pool's two target rows.
func checkConsulDNSInChromium(t *testing.T, chromium, url string) {
	t.Helper()
	flags := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--dump-dom", url}
	out, err := exec.Command(chromium, flags...).Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	dom := string(out)
	_, section, ok := strings.Cut(dom, `<h2 id="consul-dns">`)
	if !ok {
		t.Fatalf("rendered page has no Consul DNS section")
	}
	if n := strings.Count(section, `<tr class="target`); n != 2 {
		t.Errorf("rendered Consul DNS section has %d target rows, want 2", n)
	}
	if !strings.Contains(section, `<h3 class="consul-pool">web.service.consul.</h3>`) {
		t.Errorf("rendered Consul DNS section has no web.service.consul. pool")
	}
}
