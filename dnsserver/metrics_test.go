package dnsserver

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetrics(t *testing.T) {
	h := NewHandler(testState(t), testLogger(t))
	for _, q := range []struct {
		m   *dns.Msg
		tcp bool
	}{
		{query("www.example.org.", dns.TypeA), false},   // fast path
		{query("www.example.org.", dns.TypeA), false},   // fast path
		{query("nope.example.org.", dns.TypeA), false},  // slow path, NXDOMAIN
		{query("example.com.", dns.TypeA), false},       // no zone
		{query("big.example.org.", dns.TypeTXT), false}, // truncated
		{query("example.org.", dns.TypeNAPTR), true},    // an uncounted type, over TCP
		{query("example.org.", dns.TypeA, func(m *dns.Msg) { m.IsEdns0().SetVersion(1) }), false},
	} {
		serveMsg(t, h, q.m, q.tcp)
	}
	want := `
# HELP farmdns_dns_requests_total DNS queries answered, by zone, transport, query type and rcode.
# TYPE farmdns_dns_requests_total counter
farmdns_dns_requests_total{proto="tcp",qtype="other",rcode="NOERROR",zone="example.org."} 1
farmdns_dns_requests_total{proto="udp",qtype="A",rcode="BADVERS",zone="example.org."} 1
farmdns_dns_requests_total{proto="udp",qtype="A",rcode="NOERROR",zone="example.org."} 2
farmdns_dns_requests_total{proto="udp",qtype="A",rcode="NXDOMAIN",zone="example.org."} 1
farmdns_dns_requests_total{proto="udp",qtype="A",rcode="REFUSED",zone="none"} 1
farmdns_dns_requests_total{proto="udp",qtype="TXT",rcode="NOERROR",zone="example.org."} 1
# HELP farmdns_dns_truncated_total UDP replies sent with TC set.
# TYPE farmdns_dns_truncated_total counter
farmdns_dns_truncated_total{proto="tcp"} 0
farmdns_dns_truncated_total{proto="udp"} 1
`
	if err := testutil.CollectAndCompare(h.Collector(), strings.NewReader(want), "farmdns_dns_requests_total", "farmdns_dns_truncated_total"); err != nil {
		t.Error(err)
	}
	problems, err := testutil.CollectAndLint(h.Collector())
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
}
