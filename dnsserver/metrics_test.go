package dnsserver

import (
	"log/slog"
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

func TestQueryLog(t *testing.T) {
	var buf strings.Builder
	h := NewHandler(testState(t), slog.New(slog.NewTextHandler(&buf, nil)))
	serveMsg(t, h, query("www.example.org.", dns.TypeA), false)
	if buf.Len() != 0 {
		t.Fatalf("logged while off: %s", buf.String())
	}
	h.SetQueryLog(2)
	for range 4 {
		serveMsg(t, h, query("www.example.org.", dns.TypeA), false)
	}
	// DS is not prepared: this NXDOMAIN takes the slow path.
	serveMsg(t, h, query("nope.example.org.", dns.TypeDS), false)
	serveMsg(t, h, query("nope.example.org.", dns.TypeDS), false)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines for 6 queries sampled 1 in 2:\n%s", len(lines), buf.String())
	}
	for _, want := range []string{"qname=www.example.org.", "qtype=A", "rcode=NOERROR", "answers=\"[example.org. 192.0.2.1]\"", "path=fast", "client=127.0.0.1"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("line lacks %s: %s", want, lines[0])
		}
	}
	if !strings.Contains(lines[2], "rcode=NXDOMAIN") || !strings.Contains(lines[2], "path=slow") {
		t.Errorf("NXDOMAIN line: %s", lines[2])
	}
}
