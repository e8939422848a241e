package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health/consultest"
)

// TestConsulDNSConfig: a consul_dns block alone is a valid configuration;
// what is out of range, or would hide a zone, is an error naming the key.
func TestConsulDNSConfig(t *testing.T) {
	for _, tc := range []struct {
		block, err string
	}{
		{"consul_dns: {}\n", ""},
		{"consul_dns:\n  domain: consul.\n  alt_domain: alt.example.\n  node_ttl: 5s\n  service_ttls: {\"web\": 3s, \"d*\": 9s}\n", ""},
		{"consul_dns:\n  policy: least-loaded\n  answers: 3\n", ""},
		{"consul_dns:\n  policy: round-robin\n", ""},
		{"consul_dns:\n  answers: 8\n", ""},
		{"consul_dns:\n  policy: naive-least-loaded\n  answers: 3\n", "policy"},
		{"consul_dns:\n  answers: 9\n", "consul_dns.answers"},
		{"consul_dns:\n  answers: -1\n", "consul_dns.answers"},
		{"consul_dns:\n  node_ttl: 1500ms\n", "consul_dns.node_ttl"},
		{"consul_dns:\n  domain: \"..\"\n", "consul_dns"},
		{"consul_dns:\n  domain: example.com.\nzones:\n  - origin: farm.example.com.\n    file: farm.zone\n", "zones[0].origin"},
		{"consul_dns:\n  nonsense: 1\n", "nonsense"},
	} {
		_, err := parseConfig([]byte("consul:\n  address: 127.0.0.1:8500\n" + tc.block))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.block, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want one naming %s", tc.block, err, tc.err)
		}
	}
}

// TestConsulDNSServed: farmdns with only a consul_dns block answers a
// service registered in a real Consul, and follows it going critical.
func TestConsulDNSServed(t *testing.T) {
	a := consultest.Start(t)
	a.Register(t, consultest.Instance{Node: "n1", NodeAddress: "10.0.0.1", Service: "web", ID: "web-1", Port: 80})
	config := fmt.Sprintf(`dns:
  listen: ["127.0.0.1:0"]
http:
  listen: "127.0.0.1:0"
consul:
  address: %q
consul_dns:
  domain: consul.
`, a.Addr)
	srv, _ := runServer(t, writeConfig(t, config, goodZone))
	addr := srv.dns.BoundAddrs()[0].String()
	wait := func(what string, ok func(*dns.Msg) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		var last *dns.Msg
		for time.Now().Before(deadline) {
			q := new(dns.Msg)
			q.SetQuestion("web.service.consul.", dns.TypeA)
			if in, err := dns.Exchange(q, addr); err == nil {
				if last = in; ok(in) {
					return
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("never %s; last reply:\n%v", what, last)
	}
	wait("answered web-1", func(m *dns.Msg) bool {
		return m.Rcode == dns.RcodeSuccess && len(m.Answer) == 1 && m.Answer[0].(*dns.A).A.String() == "10.0.0.1"
	})
	a.SetCheck(t, "n1", "web-1", consultest.ServiceCheckID("web-1"), "critical")
	wait("answered NXDOMAIN once web-1 was critical", func(m *dns.Msg) bool {
		return m.Rcode == dns.RcodeNameError
	})
}
