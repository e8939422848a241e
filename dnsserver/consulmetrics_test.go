package dnsserver

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/farmdns/farmdns/dnsserver/consuldns"
	"github.com/farmdns/farmdns/health"
)

// TestConsulDNSMetricsZone: queries under a Consul DNS domain, the alt
// domain too, are counted under that domain, not as in no zone.
func TestConsulDNSMetricsZone(t *testing.T) {
	r, err := consuldns.New(consuldns.Config{Domain: "consul.", AltDomain: "alt.example."}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := testState(t)
	st.ConsulDNS = consuldns.NewServer(r, staticCatalog{&health.Catalog{Datacenter: "dc1"}})
	h := NewHandler(st, testLogger(t))
	serveMsg(t, h, query("web.service.consul.", dns.TypeA), false)
	serveMsg(t, h, query("Web.Service.ALT.example.", dns.TypeA), false)
	serveMsg(t, h, query("example.com.", dns.TypeA), false)
	want := `
# HELP farmdns_dns_requests_total DNS queries answered, by zone, transport, query type and rcode.
# TYPE farmdns_dns_requests_total counter
farmdns_dns_requests_total{proto="udp",qtype="A",rcode="NXDOMAIN",zone="alt.example."} 1
farmdns_dns_requests_total{proto="udp",qtype="A",rcode="NXDOMAIN",zone="consul."} 1
farmdns_dns_requests_total{proto="udp",qtype="A",rcode="REFUSED",zone="none"} 1
`
	if err := testutil.CollectAndCompare(h.Collector(), strings.NewReader(want), "farmdns_dns_requests_total"); err != nil {
		t.Error(err)
	}
}
